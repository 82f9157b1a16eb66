"""The docs say what the code does: the user guide's registry example loads (its recipe has what its
objective requires), and every pipeline and recipe setting is documented."""

import dataclasses
import re

from conftest import ROOT

GUIDE = (ROOT / "docs" / "user-guide.md").read_text()


def test_user_guide_registry_example_loads(tmp_path):
    from ipfacediff.registry import load_registry

    block = re.search(r"## The registry.*?```yaml\n(.*?)```", GUIDE, re.S).group(1)
    f = tmp_path / "example.yaml"
    f.write_text(block)
    reg = load_registry(f)
    assert reg.pipelines["exact-propagation"].components["propagator"].name == "exact-nn"
    assert reg.pipelines["exact-propagation"].components["strategy"].name == "ip-facediff"
    assert reg.pipelines["exact-propagation"].settings.keyframe_interval == 4
    assert {"objective", "face_processor"} <= set(reg.recipes["my-identity"].components)


def test_every_setting_is_in_the_user_guide():
    from ipfacediff.registry import PipelineSettings, RecipeSettings

    for cls in (PipelineSettings, RecipeSettings):
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in GUIDE, f"docs/user-guide.md does not list {cls.__name__}.{f.name}"
