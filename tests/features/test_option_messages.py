"""lait features' option errors name the option that is wrong."""
import argparse
import math

import pytest

from lait.commands.features import _part
from model.detectors.selection import BoxSelection


@pytest.mark.parametrize("field", ["nms_thresh", "score_thresh"])
@pytest.mark.parametrize("value", [1.5, -0.1, math.nan])
def test_a_threshold_out_of_range_is_named_alone(field, value):
    """Both were named whichever was wrong ("nms_thresh and score_thresh must lie in [0, 1]")."""
    other = "score_thresh" if field == "nms_thresh" else "nms_thresh"
    with pytest.raises(ValueError) as error:
        BoxSelection(**{field: value})
    message = str(error.value)
    assert message.startswith(f"{field} (--{field.replace('_', '-')}) must lie in [0, 1], got ") and other not in message


def test_part_of_no_parts_says_what_is_wrong():
    """`--part 0/0` said "I must be 0 to N-1", when N is what is wrong."""
    with pytest.raises(argparse.ArgumentTypeError, match="N, the number of parts, must be at least 1"):
        _part("0/0")
    with pytest.raises(argparse.ArgumentTypeError, match="I must be 0 to N-1"):
        _part("3/2")
    assert _part("1/4") == (1, 4)
