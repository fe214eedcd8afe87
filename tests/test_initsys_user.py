"""config.json's `user` (a Kindling extension): validated by initsys/protocol.py,
resolved by PID 1 in the new root (initsys/program.py user_ids, initsys/users.py)."""

import pytest

from initsys import program, protocol


def _cfg(**fields):
    return protocol.validate_config({"entrypoint": ["/bin/true"], **fields})


@pytest.mark.parametrize("value", ["app", "1000", "1000:1000", "app:staff"])
def test_user_values_accepted(value):
    assert _cfg(user=value).user == value
    assert _cfg(user=value).to_json()["user"] == value


@pytest.mark.parametrize("value", ["", ":1000", "a:b:c", 1000])
def test_user_values_refused(value):
    with pytest.raises(protocol.ConfigError, match="user"):
        _cfg(user=value)


def test_no_user_means_root_and_the_env_unchanged():
    cfg = _cfg()
    assert cfg.user is None
    assert program.user_ids(cfg, {"HOME": "/root"}) == (None, {"HOME": "/root"})


@pytest.fixture
def newroot(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\napp:x:1001:\nextra:x:1002:app\n")
    return tmp_path


def test_a_named_user_gets_its_ids_groups_and_home(newroot):
    ids, env = program.user_ids(_cfg(user="app"), {"HOME": "/root", "A": "1"}, newroot)
    assert ids == (1000, 1001, [1001, 1002])
    assert env == {"HOME": "/home/app", "A": "1"}


def test_numbers_need_no_entry_and_a_given_home_stays(newroot):
    ids, env = program.user_ids(_cfg(user="4321:99", env={"HOME": "/h"}), {"HOME": "/h"}, newroot)
    assert ids == (4321, 99, [99])
    assert env == {"HOME": "/h"}


def test_an_unknown_user_names_it(newroot):
    with pytest.raises(program.ProgramError, match="config.json user 'nobody': user 'nobody': no such user"):
        program.user_ids(_cfg(user="nobody"), {}, newroot)
