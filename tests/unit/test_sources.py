import pytest

from relay.core.errors import BadRequest, NotFound
from relay.http.sources import source_properties

SOURCES = {"acme": {"business_name": "Acme", "tier": "gold"}}


def test_no_source_no_query_means_no_properties():
    assert source_properties(SOURCES, None, []) == {}


def test_query_overrides_named_source():
    assert source_properties(SOURCES, "acme", [("tier", "silver"), ("campaign", "spring")]) == {
        "business_name": "Acme", "tier": "silver", "campaign": "spring"}


def test_unknown_source_is_404():
    with pytest.raises(NotFound):
        source_properties(SOURCES, "globex", [])


@pytest.mark.parametrize("query", [
    [("bad key", "x")], [("", "x")], [("k" * 65, "x")], [("a", "x" * 257)], [("a", "line\nbreak")],
    [("a", "1"), ("a", "2")], [(f"k{i}", "v") for i in range(21)],
])
def test_hostile_query_parameters_are_refused(query):
    with pytest.raises(BadRequest):
        source_properties(SOURCES, None, query)


def test_query_parameters_are_refused_when_turned_off():
    assert source_properties(SOURCES, "acme", [], query_properties=False) == SOURCES["acme"]
    with pytest.raises(BadRequest) as refused:
        source_properties(SOURCES, "acme", [("tier", "silver")], query_properties=False)
    assert refused.value.error_code == "query_properties_disabled"
