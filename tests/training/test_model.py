"""Properties of the MegActor-Σ model on the tiny preset (CPU, seconds)."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from training.model import (
    PRESETS,
    AudioEncoder,
    MegActorModel,
    ReferenceAttnProcessor,
    extend_input_projection,
    face_dropout_attention_mask,
    megactor_config,
)

B, F_, H = 2, 3, 8  # batch, frames, latent side (tiny preset); pixels are 8x the latent
N = (H // 2) ** 2  # tokens per frame at patch 2


def make_inputs(seed: int = 0, frames: int = F_) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "noisy": torch.randn(B, frames, 4, H, H, generator=g),
        "timesteps": torch.tensor([3, 700]),
        "reference_latent": torch.randn(B, 4, H, H, generator=g),
        "driving": torch.randn(B, frames, 3, 8 * H, 8 * H, generator=g),
    }


def make_model(seed: int = 0, **overrides) -> MegActorModel:
    torch.manual_seed(seed)
    return MegActorModel(megactor_config("tiny", **overrides)).eval()


def randomize(modules: list[nn.Module], seed: int = 1) -> None:
    """Give zero-initialised layers random weights so that their effect can be observed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


# 1. the input-projection extension -----------------------------------------------------------------------------


def test_extend_input_projection_keeps_pretrained_channels_and_zeroes_new_ones():
    conv = nn.Conv2d(4, 16, kernel_size=2, stride=2)
    extended = extend_input_projection(conv, extra=3)
    assert extended.in_channels == 7 and extended.stride == conv.stride
    assert torch.equal(extended.weight[:, :4], conv.weight)
    assert torch.equal(extended.bias, conv.bias)
    assert torch.count_nonzero(extended.weight[:, 4:]) == 0
    x, extra = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 8, 8) * 100
    torch.testing.assert_close(extended(torch.cat([x, extra], 1)), conv(x))


def test_motion_features_change_nothing_at_init_and_something_once_trained():
    model, inputs = make_model(), make_inputs()
    with torch.no_grad():
        base = model(**inputs)
        other_driving = model(**{**inputs, "driving": torch.randn_like(inputs["driving"]) * 10})
        assert torch.equal(base, other_driving)
        model.denoiser.pos_embed.proj.weight[:, 4:].normal_()
        assert not torch.allclose(model(**inputs), model(**{**inputs, "driving": -inputs["driving"]}))


# 2. face-dropout attention mask --------------------------------------------------------------------------------


def test_masked_mouth_query_ignores_driving_tokens_unmasked_query_does_not():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=2, dim_head=16, bias=True, processor=ReferenceAttnProcessor())
    mouth = torch.zeros(1, 1, N, dtype=torch.bool)
    driving = torch.zeros(1, 1, N, dtype=torch.bool)
    mouth[..., 12:14] = True  # mouth queries
    driving[..., 0:6] = True  # driven (eye) region
    mask = face_dropout_attention_mask(mouth, driving)  # (1, N, N)
    tokens, reference = torch.randn(1, N, 32), torch.randn(1, 5, 32)
    changed = tokens.clone()
    changed[:, 0:6] = torch.randn(1, 6, 32) * 5  # new driving content
    out = attn(tokens, attention_mask=mask, extra_kv_states=reference)
    out_changed = attn(changed, attention_mask=mask, extra_kv_states=reference)
    torch.testing.assert_close(out_changed[:, 12:14], out[:, 12:14], rtol=0, atol=1e-6)
    assert not torch.allclose(out_changed[:, 8], out[:, 8])  # an unmasked, non-driving query sees the change
    # reference tokens are never masked: the mouth query does see them
    out_ref = attn(tokens, attention_mask=mask, extra_kv_states=torch.randn(1, 5, 32))
    assert not torch.allclose(out_ref[:, 12:14], out[:, 12:14])
    # and without the mask, the mouth query would have seen the driving tokens
    assert not torch.allclose(attn(changed)[:, 12:14], attn(tokens)[:, 12:14])


def test_no_row_is_fully_masked():
    everything = torch.ones(B, F_, N, dtype=torch.bool)
    mask = face_dropout_attention_mask(everything, everything)
    assert mask.any(-1).all()
    model, inputs = make_model(reference_blocks=0), make_inputs()
    with torch.no_grad():
        out = model(**inputs, mouth_query_mask=everything, driving_key_mask=everything)
    assert torch.isfinite(out).all()


# 3. temporal layers and reference injection ---------------------------------------------------------------------


def test_temporal_layers_sit_in_odd_blocks_and_are_identity_at_init():
    assert PRESETS["full"].temporal_blocks == list(range(1, 28, 2))
    with_temporal, without = make_model(), make_model(use_temporal=False)
    assert [i for i, b in enumerate(with_temporal.denoiser.transformer_blocks) if b.temporal is not None] == [1, 3]
    missing, unexpected = without.load_state_dict(with_temporal.state_dict(), strict=False)[:2]
    assert not missing and unexpected and all(".temporal." in k for k in unexpected)
    inputs = make_inputs()
    with torch.no_grad():
        torch.testing.assert_close(with_temporal(**inputs), without(**inputs), rtol=0, atol=1e-6)


def test_frames_interact_only_through_temporal_layers():
    inputs = make_inputs()
    other = {**inputs, "noisy": inputs["noisy"].clone()}
    other["noisy"][:, 0] += 1.0  # change frame 0 only
    model = make_model()
    with torch.no_grad():
        torch.testing.assert_close(model(**other)[:, 1:], model(**inputs)[:, 1:], rtol=0, atol=1e-6)
        randomize([b.temporal.attn.to_out for b in model.denoiser.transformer_blocks if b.temporal is not None])
        assert not torch.allclose(model(**other)[:, 1:], model(**inputs)[:, 1:])


def test_reference_enters_only_the_last_reference_blocks():
    model = make_model()  # tiny: 4 blocks, reference_blocks=2
    seen = []
    hooks = [
        block.attn1.register_forward_pre_hook(
            lambda _m, _a, kw, i=i: seen.append(i) if kw.get("extra_kv_states") is not None else None,
            with_kwargs=True,
        )
        for i, block in enumerate(model.denoiser.transformer_blocks)
    ]
    inputs = make_inputs()
    with torch.no_grad():
        model(**inputs)
    for hook in hooks:
        hook.remove()
    assert seen == [2, 3]
    other = {**inputs, "reference_latent": torch.randn_like(inputs["reference_latent"])}
    with torch.no_grad():
        assert not torch.allclose(model(**inputs), model(**other))
        no_reference = make_model(reference_blocks=0)
        assert torch.equal(no_reference(**inputs), no_reference(**other))


# 4. audio ------------------------------------------------------------------------------------------------------


def test_audio_scale_zero_and_absent_audio_equal_running_without_audio():
    model, inputs = make_model(), make_inputs()
    randomize([b.audio_attn.to_out for b in model.denoiser.transformer_blocks])
    audio = torch.randn(B, F_, 10, PRESETS["tiny"].audio_dim)
    with torch.no_grad():
        silent = model(**inputs)
        assert torch.equal(model(**inputs, audio_features=audio, audio_scale=0.0), silent)
        loud = model(**inputs, audio_features=audio)
        assert not torch.allclose(loud, silent)
        half = model(**inputs, audio_features=audio, audio_mask=torch.tensor([True, False]))
        torch.testing.assert_close(half[0], loud[0])
        assert torch.equal(half[1], silent[1])  # the sample without audio gets exactly nothing from it
        per_frame = model(**inputs, audio_features=audio, audio_scale=torch.tensor([[1.0, 0.0, 1.0]] * B))
        assert torch.equal(per_frame[:, 1], silent[:, 1])


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    inputs = make_inputs()
    audio = torch.randn(B, F_, 10, PRESETS["tiny"].audio_dim)
    results = []
    for checkpointing in (False, True):
        model = make_model().train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        loss = model(**inputs, audio_features=audio).square().mean()
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6)


def test_parameter_groups_partition_the_parameters():
    model = make_model()
    groups = model.parameter_groups()
    assert set(groups) == {"denoiser", "reference", "driven_encoder", "audio", "temporal", "unread"}
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert all(".temporal." in n for n in groups["temporal"]) and groups["temporal"]
    assert all(".audio_attn." in n for n in groups["audio"]) and groups["audio"]
    assert "denoiser.pos_embed.proj.weight" in groups["denoiser"]


def test_every_trainable_parameter_gets_a_gradient_and_no_unread_one_does():
    """What distributed training relies on: DDP fails on a trainable parameter without a gradient."""
    model, inputs = make_model(), make_inputs()
    audio = torch.randn(B, F_, 5, model.config.audio_dim)
    model(**inputs, audio_features=audio).square().mean().backward()
    groups = model.parameter_groups()
    assert groups["unread"] and all(p.grad is None for p in groups["unread"].values())
    missing = [n for g, named in groups.items() if g != "unread" for n, p in named.items() if p.grad is None]
    assert not missing
    no_reference = make_model(reference_blocks=0).parameter_groups()
    assert not no_reference["reference"] and no_reference["unread"]


# 5. loading PixArt-α -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pixart(tmp_path_factory):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    pixart = PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=32,
        in_channels=4,
        out_channels=8,
        num_layers=4,
        cross_attention_dim=64,
        sample_size=H,
        caption_channels=16,
    ).eval()
    with torch.no_grad():
        for block in pixart.transformer_blocks:  # silence the text cross-attention that audio attention replaces
            block.attn2.to_out[0].weight.zero_()
            block.attn2.to_out[0].bias.zero_()
    path = tmp_path_factory.mktemp("pixart") / "transformer"
    pixart.save_pretrained(path)
    return pixart, path


def test_from_pixart_loads_every_weight_into_denoiser_and_reference(tiny_pixart):
    pixart, path = tiny_pixart
    model = MegActorModel.from_pixart(path, reference_blocks=2, audio_dim=32)
    assert model.config.num_layers == 4 and model.config.hidden_size == 64
    ours = model.state_dict()
    for key, value in pixart.state_dict().items():
        if ".attn2." in key or key.startswith("caption_projection."):
            continue
        if key == "pos_embed.proj.weight":
            assert torch.equal(ours["denoiser." + key][:, :4], value)
            assert torch.count_nonzero(ours["denoiser." + key][:, 4:]) == 0
        else:
            assert torch.equal(ours["denoiser." + key], value), key
        if not key.startswith(("norm_out", "proj_out", "scale_shift_table")):
            reference_value = ours["reference." + key]
            assert torch.equal(reference_value, value), key


def test_loaded_denoiser_computes_what_pixart_computes(tiny_pixart):
    pixart, path = tiny_pixart
    model = MegActorModel.from_pixart(path, reference_blocks=0, use_audio=False, use_temporal=False).eval()
    inputs = make_inputs(frames=1)
    with torch.no_grad():
        ours = model(**inputs)[:, 0]
        theirs = pixart(
            inputs["noisy"][:, 0],
            encoder_hidden_states=torch.randn(B, 7, 16),
            timestep=inputs["timesteps"],
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        ).sample
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_from_pixart_rejects_mismatched_shapes(tiny_pixart):
    _, path = tiny_pixart
    with pytest.raises(ValueError, match="shapes"):
        MegActorModel.from_pixart(path, config=megactor_config("tiny", hidden_size=32))


# Whisper ---------------------------------------------------------------------------------------------------------


def test_audio_encoder_windows_tokens_per_frame_and_stays_frozen(tmp_path):
    from transformers import WhisperConfig, WhisperModel

    config = WhisperConfig(
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        max_source_positions=50,  # a 1 s window: 50 tokens
        max_target_positions=8,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=[],
        begin_suppress_tokens=[],
    )
    torch.manual_seed(0)
    encoder = AudioEncoder.from_config(config)
    assert encoder.window_samples == 16000 and encoder.token_rate == 50
    waveform = torch.randn(2, 20480) * 0.1  # 1.28 s: 32 frames at 25 fps, two encoder windows
    features = encoder(waveform, num_frames=32, fps=25)
    assert features.shape == (2, 32, 10 * 2, 32)  # every hidden state: the embedding output and the layer's
    tokens = encoder.encode(waveform)
    assert tokens.shape == (2, 64, 2, 32)
    torch.testing.assert_close(features[:, 5], tokens[:, 6:16].flatten(1, 2))  # frame 5 and two either side
    torch.testing.assert_close(features[:, 0, :8], tokens[:, :1].expand(-1, 4, -1, -1).flatten(1, 2))  # clamped
    # the last layer alone is Whisper's own last_hidden_state, token for token
    last = AudioEncoder(encoder.encoder, encoder.feature_extractor, layers=1)
    mel = encoder.feature_extractor(list(waveform[:, :16000].numpy()), sampling_rate=16000, max_length=16000,
                                    padding="max_length", return_tensors="pt").input_features
    torch.testing.assert_close(last.encode(waveform[:, :16000])[:, :, 0], encoder.encoder(mel).last_hidden_state)
    assert last(waveform, num_frames=32, fps=25).shape == (2, 32, 10, 32)
    with pytest.raises(ValueError, match="layers must be 1..2"):
        AudioEncoder(encoder.encoder, encoder.feature_extractor, layers=3)
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not encoder.train().encoder.training

    WhisperModel(config).save_pretrained(tmp_path)
    encoder.feature_extractor.save_pretrained(tmp_path)
    loaded = AudioEncoder.from_pretrained(tmp_path)
    assert loaded(waveform, num_frames=32, fps=25).shape == (2, 32, 20, 32)


def test_from_pixart_takes_the_pipeline_folder_as_published(tiny_pixart):
    pixart, path = tiny_pixart  # path is <pipeline>/transformer
    torch.manual_seed(0)  # the modules PixArt-alpha has no weights for start alike too
    from_root = MegActorModel.from_pixart(path.parent, reference_blocks=2, audio_dim=32)
    torch.manual_seed(0)
    from_transformer = MegActorModel.from_pixart(path, reference_blocks=2, audio_dim=32)
    for (name, a), (_, b) in zip(from_root.state_dict().items(), from_transformer.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
