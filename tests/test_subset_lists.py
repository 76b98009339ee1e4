"""Class lists: parsing, errors that name every offender, resolution order, the built-in lists."""
import re
from importlib import resources

import pytest

from helpers import A, B, C, D, REPO, build, kaggle_tree, read_npz, write_list
from packer import UserError
from packer.subset import read_subset_list

# the lists shipped in the package (the README's four, and any added since)
BUILTINS = sorted(p.stem for p in (REPO / "packer" / "lists").glob("*.txt"))
WNID = re.compile(r"n\d{8}")


def test_comments_blank_lines_and_trailing_text(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text(f"# my classes\n\n{C} chain saw\n   {A}\t# tench\n\n{B}#springer\r\n# {D}\n   \n")
    subset = read_subset_list(str(path))
    assert subset.wnids == (C, A, B)
    assert subset.name == "l"


def test_malformed_wnids_are_all_named(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text(f"{A}\nn0144076\n{B}\nN01440764 tench\nn014407640\nx\n")
    with pytest.raises(UserError) as info:
        read_subset_list(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for part in ("line 2 'n0144076'", "line 4 'N01440764'", "line 5 'n014407640'", "line 6 'x'"):
        assert part in message
    assert f"'{A}'" not in message and f"'{B}'" not in message
    assert "\n" not in message


def test_repeated_wnids_are_all_named(tmp_path):
    path = tmp_path / "rep.txt"
    path.write_text(f"{A}\n{B}\n{A}\n{C}\n{B} again\n")
    with pytest.raises(UserError) as info:
        read_subset_list(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert f"{A} (lines 1 and 3)" in message
    assert f"{B} (lines 2 and 5)" in message
    assert C not in message


def test_malformed_and_repeated_in_one_message(tmp_path):
    path = tmp_path / "both.txt"
    path.write_text(f"{A}\nbogus\n{A}\n")
    with pytest.raises(UserError) as info:
        read_subset_list(str(path))
    assert "line 2 'bogus'" in str(info.value) and f"{A} (lines 1 and 3)" in str(info.value)


def test_empty_list(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# nothing here\n\n")
    with pytest.raises(UserError, match=re.escape(str(path))):
        read_subset_list(str(path))


def test_unknown_name_lists_the_builtins():
    with pytest.raises(UserError) as info:
        read_subset_list("imagenet31")
    message = str(info.value)
    assert "'imagenet31'" in message
    assert "aux_files/imagenet31.txt" in message
    assert {"imagenet100", "imagenet30", "imagenette", "imagewoof"} <= set(BUILTINS)
    assert f"built-ins: {', '.join(BUILTINS)}" in message


def test_resolution_order(tmp_path, _isolated_cwd):
    # 3. built-in
    builtin = read_subset_list("imagenette")
    assert builtin.wnids[0] == "n01440764" and len(builtin.wnids) == 10
    # 2. ./aux_files/NAME.txt wins over the built-in of the same name
    write_list(_isolated_cwd / "aux_files" / "imagenette.txt", [B, A])
    aux = read_subset_list("imagenette")
    assert aux.wnids == (B, A) and aux.name == "imagenette"
    # 1. a path wins over both
    given = write_list(tmp_path / "lists" / "imagenette.txt", [C])
    assert read_subset_list(str(given)).wnids == (C,)
    # a relative path with a folder works too
    write_list(_isolated_cwd / "lists" / "birds.txt", [D, A])
    birds = read_subset_list("lists/birds.txt")
    assert birds.wnids == (D, A) and birds.name == "birds"


def test_aux_files_list_used_by_a_build(tmp_path, _isolated_cwd):
    tree = kaggle_tree(tmp_path / "kaggle")
    write_list(_isolated_cwd / "aux_files" / "mysubset.txt", [B, C])
    result = build("mysubset", tree.data_dir, tmp_path / "out")
    assert result.archive.name == "mysubset_cls.npz"
    z = read_npz(result.archive)
    assert z["y_train"].tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert z["train_id"].tolist() == [14, 15, 16, 17, 18, 19, 20]


def test_wnids_without_train_folder_are_all_named(tmp_path):
    tree = kaggle_tree(tmp_path / "kaggle")
    missing1, missing2 = "n09999991", "n00000007"
    path = write_list(tmp_path / "l.txt", [A, missing1, B, missing2])
    with pytest.raises(UserError) as info:
        build(path, tree.data_dir, tmp_path / "out")
    message = str(info.value)
    assert str(path) in message and str(tree.train_dir) in message
    assert missing1 in message and missing2 in message
    assert A not in message and B not in message
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# -- built-in lists ---------------------------------------------------------------

def _packaged(name):
    return resources.files("packer.lists").joinpath(f"{name}.txt").read_bytes()


def test_aux_files_lists_equal_packaged_lists():
    aux = sorted(p.stem for p in (REPO / "aux_files").glob("*.txt"))
    assert aux == BUILTINS
    for name in BUILTINS:
        assert (REPO / "aux_files" / f"{name}.txt").read_bytes() == _packaged(name), name


@pytest.mark.parametrize("name,count", [("imagenet30", 30), ("imagenet100", 100), ("imagenette", 10),
                                        ("imagewoof", 10)])
def test_builtin_lists(name, count):
    subset = read_subset_list(name)
    assert len(subset.wnids) == count
    assert len(set(subset.wnids)) == count
    assert all(WNID.fullmatch(w) for w in subset.wnids)
    assert subset.name == name
    lines = [line.split("#")[0].split() for line in _packaged(name).decode().splitlines()]
    assert tuple(tokens[0] for tokens in lines if tokens) == subset.wnids


def test_imagenette_order():
    assert read_subset_list("imagenette").wnids == (
        "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
        "n03394916", "n03417042", "n03425413", "n03445777", "n03888257")


def test_trailing_text_with_a_colon_is_ignored(tmp_path):
    """README: text after the WNID on its line is ignored (a line starting with a WNID is one class)."""
    path = tmp_path / "l.txt"
    path.write_text(f"{A} tench: a fish\n{B}\n")
    assert read_subset_list(str(path)).wnids == (A, B)


def test_list_saved_with_a_byte_order_mark(tmp_path):
    """Windows editors save UTF-8 with a BOM; the first WNID must still be read."""
    path = tmp_path / "l.txt"
    path.write_bytes(f"{A}\n{B}\n".encode("utf-8-sig"))
    assert read_subset_list(str(path)).wnids == (A, B)


def test_path_without_suffix_in_current_folder(_isolated_cwd):
    """Resolution rule 1: a path to an existing file is used, also without a suffix or folder."""
    write_list(_isolated_cwd / "classes", [C, A])
    assert read_subset_list("classes").wnids == (C, A)
