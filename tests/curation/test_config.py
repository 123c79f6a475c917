import pytest

from curation.config import load_config
from curation.errors import ConfigError


def test_defaults_are_the_papers_thresholds():
    t = load_config().thresholds
    assert (t.face_res_px_min, t.sync_c_min, t.sync_d_max, t.yaw_abs_mean_deg_max) == (600, 6.0, 8.5, 30.0)


def test_yaml_file_and_overrides_apply_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("thresholds:\n  face_res_px_min: 400\nface:\n  sample_fps: 2\n")
    config = load_config(path, {"thresholds.face_res_px_min": 300})
    assert config.thresholds.face_res_px_min == 300
    assert config.face.sample_fps == 2
    assert config.thresholds.sync_c_min == 6.0  # untouched keys keep the defaults


def test_thresholds_do_not_change_the_scoring_hash():
    base = load_config()
    assert base.with_overrides({"thresholds.face_res_px_min": 1}).scoring_hash() == base.scoring_hash()
    assert base.with_overrides({"face.sample_fps": 1}).scoring_hash() != base.scoring_hash()


@pytest.mark.parametrize("overrides, needle", [
    ({"thresholds.face_res_px_min": -1}, "thresholds.face_res_px_min"),
    ({"thresholds.nonsense": 1}, "unknown config key 'thresholds.nonsense'"),
    ({"face.sample_fps": "fast"}, "face.sample_fps"),
    ({"clips.max_clip_s": 1.0}, "max_clip_s"),
])
def test_bad_values_name_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, overrides)


def test_unknown_key_in_file_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("face:\n  sampel_fps: 2\n")
    with pytest.raises(ConfigError, match="face.sampel_fps"):
        load_config(path)


def test_missing_or_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "bad.yaml")
