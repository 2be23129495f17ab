"""The template-syntax parser and the requirements/rank expressions, as pure functions."""

from __future__ import annotations

import pytest

from vcluster.testbed.cloud.expr import ExprError, matches, rank
from vcluster.testbed.cloud.template_parse import (
    Template,
    TemplateParseError,
    parse_str_or_xml,
    parse_text,
    template_xml,
)


def test_all_value_forms() -> None:
    text = ('# a comment\nname = "quoted \\"x\\" \\\\n"\nUNQUOTED=word\n'
            'VEC = [ a = "1",\n  B = two ]\nEMPTY =\nEMPTYVEC = [ ]\nMULTI = "line1\nline2"\n'
            'NIC = [ NETWORK = "n" ]\nNIC = [ NETWORK = "m" ]\n')
    tmpl = parse_text(text)
    assert tmpl.attrs == [
        ("NAME", 'quoted "x" \\\\n'), ("UNQUOTED", "word"), ("VEC", {"A": "1", "B": "two"}),
        ("EMPTY", ""), ("EMPTYVEC", {}), ("MULTI", "line1\nline2"),
        ("NIC", {"NETWORK": "n"}), ("NIC", {"NETWORK": "m"})]


@pytest.mark.parametrize(("text", "message"), [
    ("A", "syntax error, unexpected $end, expecting EQUAL or EQUAL_EMPTY at line 1, "
          "columns 1:2"),
    ("A = ", "syntax error, unexpected $end, expecting OBRACKET or CCDATA or STRING at "
             "line 1, columns 2:5"),
    ("A = [ B ]", "syntax error, unexpected CBRACKET, expecting EQUAL at line 1, "
                  "columns 8:10"),
    ("A = [ B = ]", "syntax error, unexpected $end, expecting STRING at line 1, "
                    "columns 11:12"),
    ("A = [ B = 1, ]", "syntax error, unexpected CBRACKET, expecting VARIABLE at line 1, "
                       "columns 14:15"),
    ("A = [ = ]", "syntax error, unexpected EQUAL, expecting CBRACKET or VARIABLE at "
                  "line 1, columns 7:9"),
    ("A = 1\n]", "syntax error, unexpected CBRACKET, expecting $end at line 2, columns 6:8"),
])
def test_parse_errors_like_oned(text: str, message: str) -> None:
    with pytest.raises(TemplateParseError) as info:
        parse_text(text)
    assert str(info.value) == "Parse error: " + message


def test_xml_input_and_output() -> None:
    tmpl = parse_str_or_xml("<TEMPLATE><CPU>1</CPU><NIC><network>x</network></NIC>"
                            "<CTX><![CDATA[a]]>b]]&gt;</CTX></TEMPLATE>")
    assert tmpl.attrs == [("CPU", "1"), ("NIC", {"NETWORK": "x"}), ("CTX", "ab]]>")]
    assert template_xml(Template([("Z", "1"), ("A", {"K": "v]]>"})]), "T") == (
        "<T><A><K><![CDATA[v]]]]><![CDATA[>]]></K></A><Z><![CDATA[1]]></Z></T>")


def test_merge_replaces_every_attribute_of_a_name() -> None:
    base = parse_text('A = 1\nNIC = [ N = "a" ]\nNIC = [ N = "b" ]\nB = 2')
    base.merge(parse_text('NIC = [ N = "c" ]\nC = 3'))
    assert base.attrs == [("A", "1"), ("B", "2"), ("NIC", {"N": "c"}), ("C", "3")]


HOST = {"NAME": "host12", "ID": "12", "FREE_CPU": "350", "FREE_MEM": "1000",
        "RUNNING_VMS": "3"}


@pytest.mark.parametrize(("text", "expected"), [
    ("", True), ('NAME = "host1*"', True), ('NAME = "host1?"', True),
    ('NAME = "host1"', False), ('NAME != "gpu*"', True), ("ID = 12", True),
    ("FREE_CPU > 300 & FREE_MEM < 2000", True), ("FREE_CPU > 400 | RUNNING_VMS = 3", True),
    ("!(ID = 12)", False), ("MISSING = 1", False), ("!(MISSING = 1)", True),
    ("(ID > 20 | ID < 13) & !(NAME = \"x\")", True), ("ID > -1", True),
])
def test_requirements(text: str, expected: bool) -> None:
    assert matches(text, HOST.get) is expected


def test_rank_and_errors() -> None:
    assert rank("FREE_CPU - RUNNING_VMS * 100", HOST.get) == 50
    assert rank("-RUNNING_VMS", HOST.get) == -3
    assert rank("(FREE_MEM + MISSING) / 4", HOST.get) == 250
    for bad in ("FREE_CPU >", "ID = = 1", "(ID = 1", "NAME ~ 1"):
        with pytest.raises(ExprError):
            matches(bad, HOST.get)
