"""Model names are checked wherever they enter: a reference, a key, a file name, the CLI, serving.
A name with '/' or '..' never reaches an S3 key or a local path."""

import pytest

from transferflow.errors import RegistryError
from transferflow.registry.layout import (
    alias_key,
    golden_key,
    parse_reference,
    pulled_name,
    versions_prefix,
)
from transferflow.registry.reads import Reads
from transferflow.serving.follower import Reference

BAD_NAMES = ["../etc", "a/b", "..", "Flowers", "-x", "a b", "x" * 64]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_every_key_and_file_name_refuses_a_bad_model_name(name):
    builders = (versions_prefix, golden_key, lambda n: pulled_name(n, 1),
                lambda n: alias_key(n, "production"))
    for build in builders:
        with pytest.raises(RegistryError, match="is not valid: use 1-63 lowercase letters"):
            build(name)


@pytest.mark.parametrize("reference", ["../etc:1", "a/b@production", "Flowers", "x/..:2"])
def test_references_with_a_bad_name_are_refused_before_any_storage_call(reference):
    class NoStorage(Reads):
        bucket = "never-read"

        def metadata(self, name, version):
            raise AssertionError("storage was called")

        def alias_document(self, name, alias):
            raise AssertionError("storage was called")

    with pytest.raises(RegistryError, match="model name .* is not valid"):
        NoStorage().resolve(reference)
    with pytest.raises(RegistryError, match="model name .* is not valid"):
        Reference.parse(reference)


def test_good_references_parse():
    assert parse_reference("flowers-vgg16") == ("flowers-vgg16", None, None)
    assert parse_reference("flowers.v2:12") == ("flowers.v2", 12, None)
    assert parse_reference("f_1@production") == ("f_1", None, "production")
    with pytest.raises(RegistryError, match="is not NAME, NAME:VERSION or NAME@ALIAS"):
        parse_reference("f@Prod")


def test_the_cli_refuses_a_bad_name_in_models_pull(tmp_path, capsys):
    from transferflow.cli import main

    code = main(["models", "pull", "../../evil:1", str(tmp_path)])
    assert code != 0 and "model name '../../evil' is not valid" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
