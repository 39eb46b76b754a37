"""How `make test` spreads the suite over its xdist workers (tests/conftest.py): the tests that share
a server run on one worker, whatever xdist's own loadgroup does with node ids."""

from types import SimpleNamespace

from tests import conftest


def test_tests_sharing_a_server_are_one_group_and_unit_tests_are_their_own():
    group = conftest.group_of
    ray, stack = "tests/scaleout/test_{}.py::test_x", "tests/integration/test_deployments.py::test_{}"
    assert group(ray.format("training_on_ray")) == group(ray.format("prepare_on_ray")) == "ray"
    assert group(stack.format("a")) == group(stack.format("b"))
    assert group("tests/integration/test_cli.py::test_a") != group(stack.format("a"))
    assert group("tests/unit/test_gate.py::test_a") != group("tests/unit/test_gate.py::test_b")


def test_the_longest_groups_are_handed_out_first_and_unit_tests_last():
    ids = ["tests/unit/test_gate.py::a", "tests/integration/test_storage.py::b",
           "tests/integration/test_deployments.py::c", "tests/scaleout/test_raycluster.py::d"]
    items = [SimpleNamespace(nodeid=nodeid) for nodeid in ids]
    conftest.pytest_collection_modifyitems(None, items)
    assert [item.nodeid for item in items] == [ids[3], ids[2], ids[1], ids[0]]


def test_the_scheduler_groups_by_group_of():
    config = SimpleNamespace(getvalue=lambda name: "loadgroup", option=SimpleNamespace(
        dist="loadgroup", tx=["popen"] * 2, numprocesses=2, loadscopereorder=True))
    scheduler = conftest.pytest_xdist_make_scheduler(config, None)
    assert scheduler._split_scope("tests/scaleout/test_raycluster.py::d") == "ray"
    assert config.option.loadscopereorder is False  # the collection's order, longest first
    other = SimpleNamespace(getvalue=lambda name: "load")
    assert conftest.pytest_xdist_make_scheduler(other, None) is None  # --dist load: xdist's own
