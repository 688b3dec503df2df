"""The glyph set's pinned default fonts: found by checksum, untouched by other fonts, a one-line
error when one differs, and ``python -m tasks.data.fonts install`` (local copies, ``--from`` packages)."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.common.errors import UserError
from tasks.data import fonts
from tasks.data import glyphs

REPO = Path(__file__).resolve().parents[3]
PINNED = json.loads((REPO / "tasks" / "data" / "glyph_fonts.json").read_text())
DEFAULT_CACHE = "glyphs-v1-s28-n20-seed0-c2e8ac8a.npz"  # the default set's cache name before pinning


@pytest.fixture(scope="module")
def default_fonts():
    """The default fonts as this machine resolves them (matplotlib's, the system's or the project's)."""
    return fonts.font_files()


@pytest.fixture
def machine(tmp_path, monkeypatch, default_fonts):
    """An empty project font folder, matplotlib's fonts hidden, and a system font folder holding
    (as links) every pinned font, each under its package's folder."""
    system = tmp_path / "system"
    for path, entry in zip(default_fonts, PINNED["fonts"]):
        (system / entry["package"]).mkdir(parents=True, exist_ok=True)
        os.symlink(path, system / entry["package"] / entry["name"])
    monkeypatch.setattr(fonts, "FONT_DIR", tmp_path / "project")
    monkeypatch.setattr(fonts, "SYSTEM_FONT_DIRS", (str(system),))
    monkeypatch.setattr(fonts, "matplotlib_fonts", lambda: [])
    return tmp_path


def _hash(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_the_default_fonts_are_the_pinned_list_by_checksum(default_fonts, tmp_path):
    assert len(PINNED["fonts"]) == 40
    assert [Path(f).name for f in default_fonts] == [e["name"] for e in PINNED["fonts"]]
    assert [_hash(f) for f in default_fonts] == [e["sha256"] for e in PINNED["fonts"]]
    assert fonts.font_list(default_fonts) == [[e["name"], e["sha256"]] for e in PINNED["fonts"]]
    assert {e["package"] for e in PINNED["fonts"]} == set(PINNED["packages"]) == {
        "matplotlib", "fonts-dejavu-core", "fonts-dejavu-extra"}
    assert glyphs.cache_path(tmp_path).name == DEFAULT_CACHE


def test_other_fonts_on_the_machine_never_enter_the_default_set(machine, default_fonts, monkeypatch):
    bogus = machine / "system" / "aaa"  # searched before the real files, names like pinned ones
    bogus.mkdir()
    shutil.copyfile(default_fonts[0], bogus / "DejaVuSansCondensed.ttf")  # a pinned name, other content
    shutil.copyfile(default_fonts[0], bogus / "DejaVuSansWide.ttf")
    shutil.copyfile(default_fonts[0], bogus / "NotoSansSomething.ttf")
    found = fonts.font_files()
    assert fonts.font_list(found) == fonts.font_list(default_fonts)
    assert not [f for f in found if Path(f).parent == bogus]
    assert glyphs.cache_path(machine).name == DEFAULT_CACHE


def test_a_pinned_font_that_differs_is_a_one_line_error_naming_the_install(machine, default_fonts):
    entry = PINNED["fonts"][5]
    for path, e in zip(default_fonts, PINNED["fonts"]):  # the project folder has them all ...
        (machine / "project" / e["package"]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, machine / "project" / e["package"] / e["name"])
    truncated = machine / "project" / entry["package"] / entry["name"]
    truncated.write_bytes(truncated.read_bytes()[:1000])  # ... one of them truncated
    shutil.rmtree(machine / "system")  # and no other source
    with pytest.raises(UserError) as error:
        fonts.font_files()
    message = str(error.value)
    assert "\n" not in message and "0 are missing and 1 have another SHA-256" in message
    assert f"{truncated} is not the pinned {entry['name']}" in message
    assert "python -m tasks.data.fonts install" in message and "make install" in message
    with pytest.raises(UserError, match="python -m tasks.data.fonts install"):
        glyphs.load_glyphs(root=machine / "data", progress=False)


def test_install_copies_the_pinned_files_found_on_the_machine_and_is_idempotent(machine):
    assert "0 already there, 40 copied from this machine" in fonts.install()
    for e in PINNED["fonts"]:
        assert _hash(machine / "project" / e["package"] / e["name"]) == e["sha256"]
    assert "40 already there, 0 copied" in fonts.install()
    shutil.rmtree(machine / "system")  # installed: the project folder alone serves the set
    assert all(Path(f).is_relative_to(machine / "project") for f in fonts.font_files())
    assert glyphs.cache_path(machine).name == DEFAULT_CACHE


def test_install_takes_the_good_file_of_a_package_and_refuses_the_bad_one(machine, default_fonts, monkeypatch):
    good, bad = (next(e for e in PINNED["fonts"] if e["name"] == name and e["package"] == "fonts-dejavu-core")
                 for name in ("DejaVuSerif.ttf", "DejaVuSans.ttf"))
    pinned = machine / "pinned.json"
    pinned.write_text(json.dumps({"packages": PINNED["packages"], "fonts": [good, bad]}))
    monkeypatch.setattr(fonts, "PINNED", pinned)
    shutil.rmtree(machine / "system")
    package = machine / "deb"
    (package / "DEBIAN").mkdir(parents=True)
    (package / "DEBIAN" / "control").write_text(
        "Package: fonts-dejavu-core\nVersion: 2.37-6\nArchitecture: all\nMaintainer: test <t@example.org>\n"
        "Description: test\n")
    fonts_dir = package / "usr" / "share" / "fonts" / "truetype" / "dejavu"
    fonts_dir.mkdir(parents=True)
    shutil.copyfile(default_fonts[PINNED["fonts"].index(good)], fonts_dir / "DejaVuSerif.ttf")
    (fonts_dir / "DejaVuSans.ttf").write_bytes(b"not the pinned DejaVuSans.ttf")
    deb = machine / "fonts-dejavu-core_2.37-6_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(package), str(deb)], check=True, capture_output=True)
    with pytest.raises(UserError) as error:
        fonts.install([deb])
    message = str(error.value)
    assert "\n" not in message and "1 of the 2 pinned glyph fonts could not be installed" in message
    assert "1 refused as their SHA-256 differs (e.g. fonts-dejavu-core_2.37-6_all.deb:DejaVuSans.ttf)" in message
    assert _hash(machine / "project" / "fonts-dejavu-core" / "DejaVuSerif.ttf") == good["sha256"]
    assert sorted(p.name for p in (machine / "project").rglob("*")) == ["DejaVuSerif.ttf", "fonts-dejavu-core"]


def test_the_cli_is_one_line_and_exit_2_on_a_missing_from_file(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tasks.data.fonts", "install", "--from", str(tmp_path / "none.deb")],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"error: no file {tmp_path / 'none.deb'};") and len(done.stderr.splitlines()) == 1


def test_noto_fonts_come_after_the_pinned_ones(tmp_path, default_fonts):
    noto = tmp_path / "fonts" / "noto"
    noto.mkdir(parents=True)
    shutil.copyfile(default_fonts[0], noto / "NotoSansTest-Regular.ttf")
    shutil.copyfile(default_fonts[0], noto / "LastResort.ttf")  # skipped
    assert fonts.font_files([noto]) == default_fonts + [str(noto / "NotoSansTest-Regular.ttf")]
