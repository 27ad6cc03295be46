"""scripts/share_packages.py: a venv gets another's packages, and what they require, as hard links."""

import importlib.util
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.not_colab(reason="a venv tool, plain files")

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("share_packages", ROOT / "scripts" / "share_packages.py")
share_packages = importlib.util.module_from_spec(spec)
spec.loader.exec_module(share_packages)


def fake_dist(site: Path, name: str, requires=(), files=("__init__.py",)):
    """A minimal installed distribution: a package folder and a dist-info with METADATA and RECORD."""
    pkg = site / name
    pkg.mkdir(parents=True)
    for f in files:
        (pkg / f).write_text(f"# {name}/{f}\n")
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    meta = [f"Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0"] + [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(meta) + "\n")
    record = [f"{name}/{f},," for f in files] + [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,",
                                                 f"../../../bin/{name}-tool,,"]
    (info / "RECORD").write_text("\n".join(record) + "\n")


@pytest.fixture
def venvs(tmp_path):
    src = tmp_path / "a" / "lib" / "python3.11" / "site-packages"
    dst = tmp_path / "b" / "lib" / "python3.11" / "site-packages"
    dst.mkdir(parents=True)
    fake_dist(src, "big", requires=["dep", "cuda[extra1]", 'winonly; platform_system == "Windows"'])
    fake_dist(src, "dep")
    fake_dist(src, "cuda", requires=['cudalib; extra == "extra1"', 'unused; extra == "other"'])
    fake_dist(src, "cudalib", files=("__init__.py", "lib.so"))
    fake_dist(src, "unrelated")
    return tmp_path / "a", tmp_path / "b", src, dst


def test_links_the_named_package_and_all_it_requires_with_extras(venvs):
    a, b, src, dst = venvs
    share_packages.main([str(a), str(b), "big"])
    names = sorted(p.name for p in dst.iterdir())
    assert names == sorted(f"{n}{s}" for n in ("big", "dep", "cuda", "cudalib") for s in ("", "-1.0.dist-info"))
    assert os.path.samefile(src / "cudalib" / "lib.so", dst / "cudalib" / "lib.so")


def test_the_linked_packages_are_seen_as_installed_in_the_target(venvs):
    import importlib.metadata as metadata
    a, b, src, dst = venvs
    share_packages.main([str(a), str(b), "big"])
    found = {d.metadata["Name"] for d in metadata.distributions(path=[str(dst)])}
    assert found == {"big", "dep", "cuda", "cudalib"}


def test_removing_a_package_in_the_target_leaves_the_source_intact(venvs):
    a, b, src, dst = venvs
    share_packages.main([str(a), str(b), "big"])
    (dst / "dep" / "__init__.py").unlink()
    assert (src / "dep" / "__init__.py").read_text() == "# dep/__init__.py\n"


def test_a_missing_requirement_stops_with_one_line_naming_it(venvs, capsys):
    a, b, src, dst = venvs
    fake_dist(src, "broken", requires=["absent"])
    with pytest.raises(SystemExit) as stop:
        share_packages.main([str(a), str(b), "broken"])
    assert "absent is not installed" in str(stop.value)


def test_a_package_the_target_already_has_is_left_as_it_is_not_mixed_with_the_sources(venvs, capsys):
    a, b, src, dst = venvs
    fake_dist(dst, "dep", files=("__init__.py", "old_only.py"))  # the target's own version of a requirement
    (dst / "dep-1.0.dist-info").rename(dst / "dep-0.5.dist-info")
    metadata_file = dst / "dep-0.5.dist-info" / "METADATA"
    metadata_file.write_text(metadata_file.read_text().replace("Version: 1.0", "Version: 0.5"))
    before = (dst / "dep" / "__init__.py").read_text()
    share_packages.main([str(a), str(b), "big"])
    assert sorted(p.name for p in dst.glob("dep*")) == ["dep", "dep-0.5.dist-info"]  # one version, the target's
    assert (dst / "dep" / "__init__.py").read_text() == before
    assert not os.path.samefile(src / "dep" / "__init__.py", dst / "dep" / "__init__.py")
    assert (dst / "big" / "__init__.py").is_file()  # the rest is linked as before
    assert f"left as installed in {b}: dep 0.5" in capsys.readouterr().out
