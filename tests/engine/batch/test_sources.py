"""``--rasters`` specs: a folder, a glob, a list file, a mosaic VRT; specs naming nothing are one-line errors."""

import pytest

from pointsam_engine.batch.sources import list_rasters
from pointsam_engine.errors import RasterError


@pytest.fixture
def tiles(tmp_path):
    folder = tmp_path / "tiles"
    folder.mkdir()
    for name in ("b.tif", "a.tif", "notes.md"):
        (folder / name).write_bytes(b"x")
    return folder


def test_folder_glob_and_list_give_the_rasters_sorted_once(tiles, tmp_path):
    expected = [str(tiles / "a.tif"), str(tiles / "b.tif")]
    assert list_rasters([str(tiles)]) == expected
    assert list_rasters([str(tiles / "*.tif"), str(tiles / "a.tif")]) == expected
    listing = tmp_path / "list.txt"
    listing.write_text("# survey\ntiles/b.tif\n\ntiles/a.tif\n")
    assert list_rasters([str(listing)]) == expected[::-1]


def test_a_mosaic_vrt_gives_its_sources(tiles, tmp_path):
    vrt = tmp_path / "mosaic.vrt"
    sources = "".join(f'<SimpleSource><SourceFilename relativeToVRT="1">tiles/{n}</SourceFilename></SimpleSource>'
                      for n in ("a.tif", "b.tif"))
    vrt.write_text(f'<VRTDataset rasterXSize="2" rasterYSize="2"><VRTRasterBand band="1">{sources}'
                   "</VRTRasterBand></VRTDataset>")
    assert list_rasters([str(vrt)]) == [str(tmp_path / "tiles" / "a.tif"), str(tmp_path / "tiles" / "b.tif")]


@pytest.mark.parametrize("spec, message", [
    ("missing", "does not exist"), ("*.nothing", "matches no file"), ("empty", "holds no raster"),
    ("bad.txt", "line 1 names gone.tif, which is not a file")])
def test_a_spec_that_names_nothing_is_one_line(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.txt").write_text("gone.tif\n")
    with pytest.raises(RasterError, match=message) as raised:
        list_rasters([spec])
    assert "\n" not in str(raised.value)
