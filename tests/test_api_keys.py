"""Bad keys are refused by the API with a plain message and change nothing; odd but valid keys
round-trip exactly, prefix listing included."""
from __future__ import annotations

import pytest

from lamfs.errors import InvalidKey


@pytest.mark.parametrize("bad", ["../x.csv", "a//b.csv", "x\x00.csv", "/abs.csv", ".lamindb/x.csv", "a/./b.csv",
                                 ("n" * 252) + ".csv"])
def test_bad_keys_refused_and_nothing_changes(lf, data_dir, bad):
    objects_before = sorted(i.key for i in lf.settings.instance.storage.list(""))
    with pytest.raises(ValueError) as err:
        lf.Artifact(data_dir / "iris.csv", key=bad).save()
    assert isinstance(err.value, InvalidKey) and str(err.value)
    assert lf.Artifact.filter(include_trashed=True) == []
    assert sorted(i.key for i in lf.settings.instance.storage.list("")) == objects_before


def test_odd_keys_round_trip(lf, data_dir):
    keys = ["100%_done.csv", "dir_x/back\\slash.csv", "with space/Ünïcödé ✓.csv", "MiXeD.csv", "mixed.csv",
            "dir%/a.csv", "dirX/a.csv"]
    payloads = {}
    for i, key in enumerate(keys):
        p = data_dir / f"payload{i}.csv"
        p.write_text(f"k,{i}\n")
        payloads[key] = p.read_bytes()
        lf.Artifact(p, key=key).save()
    for key in keys:
        a = lf.Artifact.get(key=key)
        assert a.key == key
        assert a.cache().read_bytes() == payloads[key]
    assert [a.key for a in lf.Artifact.filter(key__startswith="dir%/")] == ["dir%/a.csv"]
    assert [a.key for a in lf.Artifact.filter(key__startswith="dir_")] == ["dir_x/back\\slash.csv"]
    assert [a.key for a in lf.Artifact.filter(key__startswith="mixed")] == ["mixed.csv"]
    assert lf.Artifact.filter(key__startswith="MIXED") == []
