"""--extra-data without servers: the flag's forms, and two item lists joined as one."""

import numpy as np
import pytest
from pydantic import ValidationError

from transferflow.config import RetrainConfig
from transferflow.data.decode import Decoded
from transferflow.data.extra import concatenated
from transferflow.data.splits import Items


@pytest.mark.parametrize("given, kept", [("", None), ("none", None), (" s3://b/feedback/m/labeled/ ",
                                          "s3://b/feedback/m/labeled/"), ("/data/labeled", "/data/labeled")])
def test_extra_data_forms(given, kept):
    assert RetrainConfig(extra_data=given).extra_data == kept


def test_extra_data_refuses_urls_it_cannot_read():
    with pytest.raises(ValidationError, match="s3://bucket/prefix/ or a local folder"):
        RetrainConfig(extra_data="https://example.com/labeled.tar.gz")


def items(values: list[int], bad: set[int] = frozenset()) -> Items:
    """Items whose image i is filled with values[i]; those in `bad` fail to decode."""
    def load(positions):
        positions = [int(p) for p in positions]
        good = [p for p in positions if values[p] not in bad]
        images = np.array([np.full((2, 2, 3), values[p], np.uint8) for p in good]).reshape(-1, 2, 2, 3)
        return Decoded(images, [i for i, p in enumerate(positions) if values[p] in bad])
    return Items(np.array(values, np.int32) % 2, load, lambda i: f"img{values[i]}")


def test_joined_items_load_in_the_order_asked_with_failures_where_they_were():
    joined = concatenated(items([10, 11, 12]), items([20, 21], bad={20}))
    assert joined.labels.tolist() == [0, 1, 0, 0, 1]
    decoded = joined.load(np.array([4, 0, 3, 2]))  # 3 is the second list's 20, which fails
    assert [int(image[0, 0, 0]) for image in decoded.images] == [21, 10, 12]
    assert decoded.bad == [2]
    assert joined.name(3) == "img20" and joined.name(1) == "img11"
