import pytest
from pydantic import ValidationError

from transferflow.config import RetrainConfig, default_model_name


def test_defaults_are_the_documented_ones():
    config = RetrainConfig()
    assert config.dataset == "cifar10"
    assert config.backbone == "vgg16"
    assert config.weights == "imagenet"
    assert config.fine_tune_learning_rate == 1e-4
    assert config.fine_tune_blocks == 2
    assert config.image_size == config.fine_tune_gate == config.promote_min_accuracy == "auto"
    assert config.model_name is None and config.registry_name == "cifar10-vgg16"


@pytest.mark.parametrize("field, value, fragment", [
    ("image_size", 16, "must be between 32 and 1024 pixels, or auto (got 16)"),
    ("image_size", "big", "Input should be 'auto'"),
    ("fine_tune_gate", 1.5, "must be an accuracy between 0 and 1, or auto (got 1.5)"),
    ("fine_tune_gate", -0.1, "must be an accuracy between 0 and 1, or auto"),
    ("promote_min_accuracy", 2, "must be an accuracy between 0 and 1, or auto"),
    ("head_epochs", 0, "greater than or equal to 1"),
    ("fine_tune_epochs", -1, "greater than or equal to 0"),
    ("head_learning_rate", 0, "greater than 0"),
    ("model_name", "Bad Name/..", "lowercase letters"),
    ("weights", "imagenet21k", "neither 'imagenet', 'none'"),
    ("backbone", "alexnet", "Input should be"),
    ("dataset", "   ", "dataset is empty"),
])
def test_bad_values_are_refused_with_the_field_named(field, value, fragment):
    with pytest.raises(ValidationError) as info:
        RetrainConfig(**{field: value})
    assert field in str(info.value)
    assert fragment in str(info.value)


def test_numbers_given_as_text_are_parsed_and_auto_stays_a_word():
    config = RetrainConfig(image_size="96", fine_tune_gate="0.3", promote_min_accuracy="auto")
    assert (config.image_size, config.fine_tune_gate, config.promote_min_accuracy) == (96, 0.3, "auto")


def test_unknown_parameters_are_refused():
    with pytest.raises(ValidationError, match="head_epoch"):
        RetrainConfig(head_epoch=3)


def test_fine_tune_blocks_cannot_exceed_the_backbone():
    with pytest.raises(ValidationError, match="between 1 and vgg16's 5 blocks, or 'all'"):
        RetrainConfig(fine_tune_blocks=6)
    with pytest.raises(ValidationError, match="fine_tune_blocks"):
        RetrainConfig(fine_tune_blocks="most")


def test_fine_tune_blocks_takes_all_or_a_number_from_strings():
    """CLI flags and UI forms hand the value over as text."""
    assert RetrainConfig(fine_tune_blocks="all").fine_tune_blocks == "all"
    assert RetrainConfig(fine_tune_blocks="3").fine_tune_blocks == 3


def test_weights_uri_forms_are_accepted():
    assert RetrainConfig(weights="s3://b/w/vgg16.weights.h5").weights == "s3://b/w/vgg16.weights.h5"
    assert RetrainConfig(weights="NONE").weights == "none"


@pytest.mark.parametrize("dataset, name", [
    ("cifar10", "cifar10-vgg16"),
    ("/data/My Flowers/", "my-flowers-vgg16"),
    ("https://x.org/a/flowers.tar.gz#sha256=ab", "flowers-vgg16"),
    ("s3://bucket/sets/pets/", "pets-vgg16"),
])
def test_default_model_name_comes_from_dataset(dataset, name):
    assert default_model_name(dataset, "vgg16") == name
    assert RetrainConfig(dataset=dataset).registry_name == name


@pytest.mark.parametrize("dataset, slug", [
    ("/data/données d'été", "donnees-d-ete"),
    ("/data/Straße_Ærø", "strasse_aero"),
    ("s3://b/ﬁlm №1/", "film-no1"),
])
def test_accented_dataset_names_are_transliterated(dataset, slug):
    from transferflow.config import dataset_slug

    assert dataset_slug(dataset) == slug
    assert default_model_name(dataset, "vgg16") == f"{slug}-vgg16"


def test_names_in_scripts_without_ascii_letters_stay_distinct():
    import re

    from transferflow.config import dataset_slug

    names = ["/data/кошки", "/data/собаки", "/data/猫", "/data/犬", "/data/猫 cats", "/data/犬 cats"]
    slugs = [dataset_slug(name) for name in names]
    assert len(set(slugs)) == len(names)  # none of them collapses to "dataset"
    assert all(re.fullmatch(r"ds-[0-9a-f]{8}", slug) for slug in slugs[:4])
    assert re.fullmatch(r"cats-[0-9a-f]{8}", slugs[4])
    assert dataset_slug("s3://bucket/кошки/") == slugs[0]  # stable: the name, not where it lives
    name = default_model_name("/data/кошки", "efficientnet_b0")
    assert RetrainConfig(dataset="/data/кошки", backbone="efficientnet_b0").registry_name == name
    assert re.fullmatch(r"ds-[0-9a-f]{8}-efficientnet_b0", name)
    long = default_model_name("/data/" + "x" * 60 + "猫", "efficientnet_b0")
    assert len(long) <= 63 and re.fullmatch(r"x+-[0-9a-f]{8}-efficientnet_b0", long)


def test_config_round_trips_through_json():
    config = RetrainConfig(dataset="/x", head_epochs=2, weights="none")
    assert RetrainConfig.model_validate_json(config.model_dump_json()) == config


def test_default_model_name_fits_the_registry_limit():
    config = RetrainConfig(dataset="/data/" + "x" * 80, backbone="efficientnet_b0")
    assert len(config.registry_name) <= 63
    assert config.registry_name.endswith("-efficientnet_b0")


def test_credentials_in_dataset_urls_are_refused():
    with pytest.raises(ValidationError, match="contains credentials"):
        RetrainConfig(dataset="https://alice:s3cr3t@example.org/x.tar.gz")
