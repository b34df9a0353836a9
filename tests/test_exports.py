"""Exports (soraj/exports.py): the round trip, the one search order every command uses, and
a BundleError naming the file for each kind of damage, found before any array is read."""

import json
import os
from pathlib import Path

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from soraj import export_arrays, exports


def small_params():
    # Big enough that orbax stores the arrays in a data file, not inline in the index.
    noise = np.random.default_rng(0)
    return {
        "dense": {
            "kernel": jnp.asarray(noise.normal(size=(64, 96)), jnp.float32),
            "bias": jnp.asarray(noise.normal(size=(96,)), jnp.float32),
        }
    }


def abstract(tree):
    return jax.eval_shape(lambda: tree)


# ---- Writing and reading -----------------------------------------------------------------------


def test_round_trip_dtypes_and_mismatch(tmp_path):
    params = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3) / 7, "bias": jnp.ones(3)}}
    target = tmp_path / "export"
    exports.write_export(target, params, {"kind": "test"}, dtype=jnp.float32)
    restored, config = exports.load_export(target, abstract(params))
    chex.assert_trees_all_equal(restored, params)
    assert config == {"kind": "test", "param_dtype": "float32"}
    # bfloat16 exports round to the nearest bfloat16 and come back as float32.
    exports.write_export(target, params, {"kind": "test"})
    restored, _ = exports.load_export(target, abstract(params))
    expected = jax.tree.map(lambda p: p.astype(jnp.bfloat16).astype(jnp.float32), params)
    chex.assert_trees_all_equal(restored, expected)
    wrong = {"dense": {"kernel": jnp.zeros((3, 3)), "bias": jnp.ones(3)}}
    with pytest.raises(exports.BundleError, match=r"kernel: stored \(2, 3\), expected \(3, 3\)"):
        exports.load_export(target, abstract(wrong))
    with pytest.raises(exports.BundleError, match="is not an export: it needs config.json"):
        exports.load_export(tmp_path, abstract(params))


def test_boxed_and_plain_exports_load_against_a_boxed_model(tmp_path):
    """A model's abstract tree (eval_shape of its init) holds `nn.Partitioned` boxes. Exports
    store plain arrays; those written before the trainers unboxed their state hold each
    annotated param under ".../value". Both load, as plain params."""
    plain = small_params()
    boxed = {
        "dense": {
            "kernel": nn.Partitioned(plain["dense"]["kernel"], ("embed", "mlp")),
            "bias": plain["dense"]["bias"],
        }
    }
    for name, stored in (("plain", plain), ("boxed", boxed)):
        exports.write_export(tmp_path / name, stored, {"kind": "test"}, dtype=jnp.float32)
        restored, _ = exports.load_export(tmp_path / name, abstract(boxed))
        chex.assert_trees_all_equal(restored, plain)


# ---- A write cut short --------------------------------------------------------------------------
# write_export writes NAME.tmp, then renames NAME → NAME.old and NAME.tmp → NAME, then removes
# NAME.old. Each state a crash can leave is built here by hand from complete exports.


def params_of(value):
    """Params whose every entry is `value` (exactly representable in bfloat16)."""
    return {"w": jnp.full((4, 3), value, jnp.float32)}


def stored_value(directory):
    """The one value an export of params_of(value) holds, and its config's "step"."""
    params, config = exports.load_export(directory, abstract(params_of(0.0)))
    values = np.unique(np.asarray(params["w"]))
    assert values.size == 1
    return float(values[0]), config["step"]


def leftovers(name):
    return sorted(p.name for p in name.parent.iterdir() if p.name != name.name)


def export_elsewhere(tmp_path, value, step, where):
    """A complete export of params_of(value), written apart and then moved to `where`."""
    apart = tmp_path / f"apart_{step}"
    exports.write_export(apart, params_of(value), {"kind": "test", "step": step})
    os.replace(apart, where)


def test_a_crash_between_the_renames_is_finished_by_the_next_write(tmp_path):
    name = tmp_path / "bundle" / "dit"
    exports.write_export(name, params_of(1.0), {"kind": "test", "step": 1})
    # The crash came after NAME → NAME.old and before NAME.tmp (complete, step 2) → NAME.
    os.replace(name, name.with_name("dit.old"))
    export_elsewhere(tmp_path, 2.0, 2, name.with_name("dit.tmp"))
    assert not name.exists()
    exports.recover_export(name)
    assert stored_value(name) == (2.0, 2)  # the newer, complete export swapped in
    assert leftovers(name) == []
    # The next write after such a crash also starts by recovering, and then swaps in its own.
    os.replace(name, name.with_name("dit.old"))
    export_elsewhere(tmp_path, 3.0, 3, name.with_name("dit.tmp"))
    exports.write_export(name, params_of(4.0), {"kind": "test", "step": 4})
    assert stored_value(name) == (4.0, 4)
    assert leftovers(name) == []


def test_an_unfinished_temporary_export_gives_the_old_one_back(tmp_path):
    name = tmp_path / "dit"
    exports.write_export(name, params_of(1.0), {"kind": "test", "step": 1})
    os.replace(name, name.with_name("dit.old"))
    # NAME.tmp without its config.json (written last) is not complete: the old one returns.
    export_elsewhere(tmp_path, 2.0, 2, name.with_name("dit.tmp"))
    (name.with_name("dit.tmp") / "config.json").unlink()
    exports.recover_export(name)
    assert stored_value(name) == (1.0, 1)
    assert leftovers(name) == ["dit.tmp"]  # an unfinished write, started afresh by the next
    exports.write_export(name, params_of(5.0), {"kind": "test", "step": 5})
    assert stored_value(name) == (5.0, 5)
    assert leftovers(name) == []


def test_a_leftover_old_export_does_not_block_the_next_write(tmp_path):
    name = tmp_path / "dit"
    exports.write_export(name, params_of(1.0), {"kind": "test", "step": 1})
    # The crash came after the swap, before NAME.old was removed.
    export_elsewhere(tmp_path, 0.5, 0, name.with_name("dit.old"))
    exports.write_export(name, params_of(2.0), {"kind": "test", "step": 2})
    assert stored_value(name) == (2.0, 2)
    assert leftovers(name) == []


def test_recovering_a_sound_or_absent_export_changes_nothing(tmp_path):
    name = tmp_path / "dit"
    exports.recover_export(name)  # nothing there: nothing to do
    assert list(tmp_path.iterdir()) == []
    exports.write_export(name, params_of(1.0), {"kind": "test", "step": 1})
    exports.recover_export(name)
    assert stored_value(name) == (1.0, 1)
    assert leftovers(name) == []


def test_the_bundle_vae_is_copied_whole_or_not_at_all(tmp_path, monkeypatch):
    from soraj import train

    vae = tmp_path / "vae_export"
    exports.write_export(vae, params_of(1.0), {"kind": "vae", "step": 7})
    target = tmp_path / "bundle" / "vae"
    target.parent.mkdir()
    copytree = train.shutil.copytree

    def cut_copy(source, destination):
        os.makedirs(destination)
        (Path(destination) / "config.json").write_bytes((Path(source) / "config.json").read_bytes())
        raise OSError("disk full")  # before params/ was copied

    monkeypatch.setattr(train.shutil, "copytree", cut_copy)
    with pytest.raises(OSError, match="disk full"):
        train.copy_vae(vae, target)
    assert not target.exists()  # the cut copy sits in vae.tmp, where no loader looks
    monkeypatch.setattr(train.shutil, "copytree", copytree)
    train.copy_vae(vae, target)
    assert stored_value(target) == (1.0, 7)
    assert sorted(p.name for p in target.parent.iterdir()) == ["vae"]
    exports.write_export(vae, params_of(2.0), {"kind": "vae", "step": 8})
    train.copy_vae(vae, target)  # the bundle keeps the VAE it was first given
    assert stored_value(target) == (1.0, 7)


# ---- The search order ---------------------------------------------------------------------------


def fake_export(folder, kind):
    """What find_export looks at: config.json with a kind, beside a params/ folder."""
    (folder / "params").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"kind": kind}))
    return folder


def test_search_order(tmp_path):
    """The documented order: the folder itself, its <kind>/ (a bundle), its export/ (a
    train-vae/captioner/expander workdir), its export/<kind>/ (a `soraj train` workdir)."""
    order = ["vae", "export", "export/vae"]  # after the folder itself
    for later in reversed(order):  # each place found, then hidden by the one before it
        fake_export(tmp_path / later, "vae")
        assert exports.find_export(tmp_path, "vae") == tmp_path / later
    (tmp_path / "config.json").write_text(json.dumps({"kind": "vae"}))
    (tmp_path / "params").mkdir()
    assert exports.find_export(tmp_path, "vae") == tmp_path
    for i, place in enumerate(order):  # and each place alone
        fake_export(tmp_path / f"alone{i}" / place, "vae")
        assert exports.find_export(tmp_path / f"alone{i}", "vae") == tmp_path / f"alone{i}" / place


def test_search_errors_name_the_path_and_the_places(tmp_path):
    with pytest.raises(exports.BundleError) as missing:
        exports.find_export(tmp_path / "nowhere", "captioner")
    assert str(missing.value) == f"no captioner export at {tmp_path / 'nowhere'}: it does not exist"
    (tmp_path / "export" / "dit").mkdir(parents=True)  # folders, but no export in them
    with pytest.raises(exports.BundleError) as empty:
        exports.find_export(tmp_path, "dit")
    p = tmp_path
    assert str(empty.value) == (
        f"no DiT export at {p}: looked for config.json and params/ in {p}, {p}/dit, "
        f"{p}/export, {p}/export/dit (`soraj train` writes one)"
    )


def test_the_first_export_found_must_be_of_the_kind_asked(tmp_path):
    fake_export(tmp_path / "vae", "dit")
    fake_export(tmp_path / "export", "vae")  # not looked at: the search stops at vae/
    with pytest.raises(exports.BundleError, match=r"vae holds a 'dit' export, not a 'vae' one"):
        exports.find_export(tmp_path, "vae")


# ---- config.json ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # 16 characters, then the end: the missing key would be at column 17.
        ('{"kind": "vae", ', r"config.json is not valid JSON \(.* at line 1, column 17\)"),
        ("[1, 2]", r"config.json holds a JSON list, not an object"),
        ('{"kind": "vae", "latent_shift": []}', r"json lacks 'vae_config', which a vae export"),
        ('{"vae_config": {}}', r"config.json lacks 'kind', 'latent_shift'"),
    ],
)
def test_damaged_config_names_the_file(tmp_path, text, message):
    fake_export(tmp_path, "vae")
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(exports.BundleError, match=message):
        exports.load_export_config(tmp_path, "vae", ("vae_config", "latent_shift"))


@pytest.mark.parametrize(
    "damage",
    [
        lambda stored: stored["vae_config"].update(no_such_field=1),  # unknown: TypeError
        lambda stored: stored.update(vae_config=5),  # mistyped: AttributeError
        lambda stored: stored.update(latent_shift="zero"),  # not numbers: ValueError
    ],
)
def test_config_fields_the_model_cannot_take_name_the_file(tmp_path, damage):
    from soraj.models.latent_codec import LatentCodec

    stored = json.loads(open("experiments/shapes/checkpoint/vae/config.json").read())
    damage(stored)
    fake_export(tmp_path, "vae")
    (tmp_path / "config.json").write_text(json.dumps(stored))
    with pytest.raises(exports.BundleError, match=f"{tmp_path}/config.json does not describe"):
        LatentCodec.load(tmp_path)


# ---- Damaged arrays ---------------------------------------------------------------------------


@pytest.fixture
def written(tmp_path):
    params = small_params()
    exports.write_export(tmp_path / "export", params, {"kind": "test"})
    return tmp_path / "export", params


def data_files(export):
    return sorted((export / "params" / "ocdbt.process_0" / "d").iterdir())


def test_damaged_files_are_named_before_any_array_is_read(written, monkeypatch):
    export, params = written

    def refuse(*args):
        raise AssertionError("arrays were read although the files show the damage")

    monkeypatch.setattr(export_arrays, "read_arrays", refuse)
    data = max(data_files(export), key=os.path.getsize)
    size = data.stat().st_size
    os.truncate(data, size // 2)
    with pytest.raises(exports.BundleError) as truncated:
        exports.load_export(export, abstract(params))
    assert str(truncated.value).startswith(f"{data} is cut short: {size // 2} bytes where")
    data.unlink()
    with pytest.raises(exports.BundleError, match=f"{data} is missing"):
        exports.load_export(export, abstract(params))
    (export / "params" / "manifest.ocdbt").unlink()
    with pytest.raises(exports.BundleError, match=r"params/manifest.ocdbt is missing"):
        exports.load_export(export, abstract(params))


def test_damaged_array_list_is_named(written):
    export, params = written
    recorded = export / "params" / "_METADATA"
    recorded.write_text("{not json")
    with pytest.raises(exports.BundleError, match=f"{recorded} cannot be read"):
        exports.load_export(export, abstract(params))
    recorded.unlink()
    with pytest.raises(exports.BundleError, match=f"{recorded} is missing"):
        exports.load_export(export, abstract(params))


def test_a_corrupt_array_is_a_bundle_error(written, capfd):
    """Bytes damaged in place, length unchanged: only reading finds it, and says so once."""
    export, params = written
    data = max(data_files(export), key=os.path.getsize)
    with open(data, "r+b") as file:
        file.write(b"\0" * 8)  # the zstd frame header of the first chunk
    with pytest.raises(exports.BundleError, match=r"params: array dense\.\w+: .*; the export is"):
        exports.load_export(export, abstract(params))
    assert capfd.readouterr().err == ""
