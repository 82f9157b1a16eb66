from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from ipfacediff.errors import ParameterError, RegistryError, UnknownComponentError
from ipfacediff.registry import load_registry


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "user.yaml"
    p.write_text(text)
    return p


def test_builtin_registry_loads(catalog):
    reg = load_registry(catalog=catalog)
    assert "face-crops" in reg.pipelines
    p = reg.pipeline("face-crops")
    assert p.components["face_processor"].name == "retinaface" and p.source.endswith("registry.yaml")


def test_user_file_merges_over_builtin(tmp_path, catalog):
    f = write(
        tmp_path,
        """
version: 1
pipelines:
  face-crops:
    description: mine
    face_processor: mtcnn
  extra:
    face_processor: {component: full-frame, params: {landmarks: none}}
""",
    )
    reg = load_registry(f, catalog=catalog)
    assert reg.pipeline("face-crops").description == "mine"
    assert reg.pipeline("face-crops").components["face_processor"].name == "mtcnn"
    assert reg.pipeline("extra").components["face_processor"].params.landmarks == "none"
    assert "face-crops-talking-head" in reg.pipelines  # built-ins kept


def test_misspelled_component_names_kind_match_file_and_key(tmp_path, catalog):
    f = write(tmp_path, "pipelines:\n  p:\n    face_processor: retinafce\n")
    with pytest.raises(UnknownComponentError) as e:
        load_registry(f, catalog=catalog)
    msg = str(e.value)
    assert "unknown face processor 'retinafce'" in msg and "did you mean 'retinaface'" in msg
    assert str(f) in msg and "pipelines.p.face_processor" in msg and "mtcnn" in msg


@pytest.mark.parametrize(
    "text, error, needle",
    [
        ("pipelines: [1, 2", RegistryError, "invalid YAML at line"),
        ("pipelnes: {}", RegistryError, "did you mean 'pipelines'"),
        ("version: 7", RegistryError, "not supported"),
        ("pipelines:\n  p:\n    face_processor: {params: {}}\n", RegistryError, "missing key 'component'"),
        (
            "pipelines:\n  p:\n    face_processor: {component: retinaface, params: {threshold: high}}\n",
            ParameterError,
            "threshold: 'high'",
        ),
        (
            "pipelines:\n  p:\n    face_processor: {component: retinaface, params: {treshold: 0.5}}\n",
            ParameterError,
            "did you mean 'threshold'",
        ),
        ("pipelines:\n  p:\n    editor: os.system\n", UnknownComponentError, "unknown editor 'os.system'"),
        ("pipelines:\n  p:\n    backbone: sd15\n", RegistryError, "unknown backbone 'sd15'"),
        ("pipelines:\n  p:\n    metrics: psnr\n", RegistryError, "expected a list"),
        ("- a\n- b\n", RegistryError, "top level must be a mapping"),
    ],
)
def test_bad_registry_files(tmp_path, catalog, text, error, needle):
    f = write(tmp_path, text)
    with pytest.raises(error) as e:
        load_registry(f, catalog=catalog)
    assert needle in str(e.value), str(e.value)
    assert str(f) in str(e.value)


def test_missing_registry_file(tmp_path, catalog):
    with pytest.raises(RegistryError, match="does not exist"):
        load_registry(tmp_path / "nope.yaml", catalog=catalog)


def test_cli_misspelled_component_one_line_exit_2(tmp_path):
    f = write(tmp_path, "pipelines:\n  p:\n    face_processor: {component: mtcnnn}\n")
    r = run_cli("pipelines", "--registry", str(f))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "did you mean 'mtcnn'" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_cli_debug_shows_traceback(tmp_path):
    f = write(tmp_path, "pipelines:\n  p:\n    face_processor: {component: mtcnnn}\n")
    r = run_cli("--debug", "pipelines", "--registry", str(f))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_cli_pipelines_validates_and_lists_user_file(tmp_path):
    f = write(
        tmp_path, "pipelines:\n  mine:\n    description: hello\n    face_processor: mtcnn\n    metrics: [psnr]\n"
    )
    r = run_cli("pipelines", "--registry", str(f), "--json")
    assert r.returncode == 0, r.stderr
    import json

    data = json.loads(r.stdout)
    assert data["pipelines"]["mine"]["components"]["face_processor"]["component"] == "mtcnn"
    assert data["pipelines"]["mine"]["components"]["face_processor"]["params"]["threshold"] == 0.99
    assert data["files"][-1] == str(f)
    assert str(ROOT / "registry.yaml") == data["files"][0]


def test_extends_changes_one_slot_in_two_lines(tmp_path, catalog):
    f = write(
        tmp_path,
        """
version: 1
pipelines:
  ip-facediff-exact:
    extends: ip-facediff
    propagator: exact-nn
  exact-dense:
    extends: ip-facediff-exact
    settings: {keyframe_interval: 2}
""",
    )
    reg = load_registry(f, catalog=catalog)
    base, one, two = reg.pipeline("ip-facediff"), reg.pipeline("ip-facediff-exact"), reg.pipeline("exact-dense")
    assert one.components["propagator"].name == "exact-nn" and base.components["propagator"].name == "layered"
    assert {k: v.name for k, v in one.components.items() if k != "propagator"} == {
        k: v.name for k, v in base.components.items() if k != "propagator"
    }
    assert one.components["editor"].params == base.components["editor"].params
    assert [m.to_json() for m in one.metrics] == [m.to_json() for m in base.metrics]
    # settings merge key by key through the chain; slots carry over
    assert two.settings.keyframe_interval == 2 and two.settings.keyframe_method == base.settings.keyframe_method
    assert two.components["propagator"].name == "exact-nn"
    # the built-in ip-facediff-fast extends ip-facediff too
    fast = reg.pipeline("ip-facediff-fast")
    assert fast.settings.keyframe_interval == 16 and fast.components["propagator"].name == "layered"


@pytest.mark.parametrize(
    "body, needle",
    [
        ("  a:\n    extends: nope\n", "extends: unknown pipeline 'nope'"),
        ("  a:\n    extends: b\n  b:\n    extends: a\n", "extends itself"),
        (
            "  a:\n    strategy: ip-facediff\n    face_processor: retinaface\n    inverter: ddim\n",
            "the strategy 'ip-facediff' requires editor, propagator",
        ),
        (
            "  a:\n    face_processor: retinaface\n    settings: {strategy: tokenflow}\n",
            "the strategy is a slot now; write `strategy: tokenflow`",
        ),
    ],
)
def test_bad_extends_missing_required_slots_and_old_strategy_setting_fail_at_load(tmp_path, catalog, body, needle):
    f = write(tmp_path, "version: 1\npipelines:\n" + body)
    with pytest.raises(RegistryError) as e:
        load_registry(f, catalog=catalog)
    assert needle in str(e.value) and str(f) in str(e.value)


def test_recipe_names_its_objective_and_the_objective_s_required_slots_are_checked(tmp_path, catalog):
    f = write(tmp_path, "version: 1\nrecipes:\n  r:\n    objective: identity\n    identity_encoder: mobilefacenet\n")
    with pytest.raises(RegistryError, match="the objective 'identity' requires face_processor"):
        load_registry(f, catalog=catalog)
    reg = load_registry(catalog=catalog)
    assert reg.recipe("identity").components["objective"].name == "identity"
    assert reg.recipe("edit").components["objective"].name == "edit"
