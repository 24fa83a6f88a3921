from pathlib import Path

import pytest

from mil.errors import CliError
from mil.extract.sources import find_cells


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_folder_per_slide(tmp_path: Path) -> None:
    for rel in ["B/z.TIF", "A/x.PNG", "A/sub/y.jpeg", "A/w.bmp", "A/notes.txt", "A/.hidden.png",
                "C/readme.md"]:
        _touch(tmp_path / rel)
    cohort = find_cells(tmp_path)
    assert list(cohort.slides) == ["A", "B"]  # C has no images: not a slide
    assert [c.cell_id for c in cohort.slides["A"]] == ["sub/y", "w", "x"]
    assert cohort.slides["A"][0].rel_path == "A/sub/y.jpeg"
    assert cohort.slides["A"][0].path.is_absolute() and cohort.n_cells() == 4
    assert find_cells(tmp_path).slides == cohort.slides  # deterministic


def test_manifest(tmp_path: Path) -> None:
    _touch(tmp_path / "img" / "a.png")
    absolute = _touch(tmp_path / "elsewhere" / "b.png")
    m = tmp_path / "m.csv"
    m.write_text(f"slide_id,path,cell_id,x,y\nS 1,img/a.png,c1,1.5,2\nS 1,{absolute},,3,4\n"
                 "S2,img/a.png,c9,0,0\n")
    cohort = find_cells(m)
    assert cohort.has_coords and list(cohort.slides) == ["S 1", "S2"]
    a, b = cohort.slides["S 1"]
    assert (a.cell_id, a.rel_path, a.x, a.y) == ("c1", "img/a.png", 1.5, 2.0)
    assert b.cell_id == "b" and b.path == absolute


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("slide,path\nS,a.png\n", r"lacks column\(s\) slide_id"),
        ("slide_id,path\n", "has no rows"),
        ("slide_id,path,cell_id\nS,a.png,c\nS,b.png,c\n", "row 3: duplicate cell id 'c'"),
        ("slide_id,path,x,y\nS,a.png,1,zz\n", "row 2: column 'y' is not a number"),
        ("slide_id,path\nS,\n", "row 2: empty slide_id or path"),
    ],
)
def test_manifest_errors(tmp_path: Path, content: str, message: str) -> None:
    m = tmp_path / "m.csv"
    m.write_text(content)
    with pytest.raises(CliError, match=message) as err:
        find_cells(m)
    assert str(m) in str(err.value) and "\n" not in str(err.value)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="source not found"):
        find_cells(tmp_path / "nope")
    with pytest.raises(CliError, match="no cell images"):
        find_cells(tmp_path)
    _touch(tmp_path / "S" / "a.png")
    _touch(tmp_path / "S" / "a.jpg")
    with pytest.raises(CliError, match="duplicate cell id 'a' in slide 'S'"):
        find_cells(tmp_path)
    with pytest.raises(CliError, match="is a file"):
        find_cells(tmp_path / "S" / "a.png")
