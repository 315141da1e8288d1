from __future__ import annotations

import pytest

from atomr_infer_core import (
    ExecuteBatch,
    ImageBase64Part,
    ImageUrlPart,
    Message,
    Priority,
    RequestKind,
    Role,
    SamplingParams,
    TextPart,
)


def test_message_text_skips_images() -> None:
    msg = Message(
        role="user",
        content=[TextPart(text="look "), ImageUrlPart(url="http://x/a.png"), TextPart(text="here")],
    )
    assert msg.role is Role.USER
    assert msg.text == "look here"
    assert isinstance(msg.content, tuple)


def test_base64_image_builds_a_data_url_and_hides_its_data_in_repr() -> None:
    part = ImageBase64Part(mime="image/png", data="QUJD")
    assert part.data_url() == "data:image/png;base64,QUJD"
    assert "QUJD" not in repr(part)


def test_unknown_role_is_rejected() -> None:
    with pytest.raises(ValueError):
        Message(role="wizard", content="hi")


def test_sampling_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"temperature: must be between 0.0 and 2.0 \(got 3.0\)"):
        SamplingParams(temperature=3.0)
    with pytest.raises(ValueError, match="max_tokens: must be >= 1"):
        SamplingParams(max_tokens=0)
    assert SamplingParams(stop="END").stop == ("END",)


def test_batch_requires_the_input_of_its_kind() -> None:
    with pytest.raises(ValueError, match="needs messages"):
        ExecuteBatch(request_id="r", model="m")
    batch = ExecuteBatch(
        request_id="r", model="m", kind="embedding", inputs=["a", "bb"], priority=2
    )
    assert batch.kind is RequestKind.EMBEDDING
    assert batch.priority is Priority.HIGH


def test_estimated_tokens_reserve_input_and_output() -> None:
    batch = ExecuteBatch(
        request_id="r",
        model="m",
        messages=[Message(role="user", content="x" * 400)],
        sampling=SamplingParams(max_tokens=50, n=2),
    )
    assert batch.input_token_estimate() == 100
    assert batch.estimated_total_tokens() == 200
    explicit = ExecuteBatch(
        request_id="r", model="m", prompt="p", kind="completion", estimated_tokens=7
    )
    assert explicit.estimated_total_tokens() == 7
