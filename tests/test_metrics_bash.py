"""Tests for the Bash template match (eval/metrics/bash.py): one test per template rule."""

from __future__ import annotations

import functools
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codefusion import languages
from codefusion.scoring.metrics.bash import normalise_whitespace, template, template_match

is_valid = functools.partial(languages.is_valid, name="bash")


def same(a: str, b: str) -> bool:
    ok, by = template_match(a, b)
    assert by == "template", (a, b)
    return ok


# --------------------------------------------------------------------------- utilities


def test_sudo_is_dropped() -> None:
    assert template("sudo rm -rf /tmp/x") == "rm -r -f ARG"
    assert same("sudo rm -rf /tmp/x", "rm -rf /var/y")
    assert same("sudo -u bob ls -l", "ls -l")
    assert same("find . | sudo tee log", "find . | tee out")


def test_egrep_fgrep_become_grep_flags() -> None:
    assert template("egrep 'a|b' f") == "grep -E ARG ARG"
    assert template("fgrep -i x f") == "grep -F -i ARG ARG"
    assert same("egrep foo file", "grep -E bar other")
    assert not same("egrep foo file", "grep -F foo file")


def test_utility_base_name() -> None:
    assert template("/usr/bin/find . -name x") == "find ARG -name ARG"
    assert same("/bin/ls -l", "ls -l")


# --------------------------------------------------------------------------- flags


def test_flags_keep_their_order() -> None:
    assert template("ls -la") == "ls -l -a"
    assert template("ls -al") == "ls -a -l"
    assert not same("ls -la", "ls -al")
    assert not same("grep -v -i x f", "grep -i -v x f")


def test_single_dash_cluster_splits_into_letters() -> None:
    assert same("ls -la", "ls -l -a")
    assert template("tar -xzvf a.tgz") == "tar -x -z -v -f ARG"
    # an attached value after the letters is an argument
    assert template("head -n10 f") == "head -n ARG ARG"
    assert same("sort -k2 f", "sort -k 5 g")


def test_find_flags_are_not_split() -> None:
    assert template("find . -name x -print0") == "find ARG -name ARG -print0"
    assert template("find . -maxdepth 1 -iname '*.c'") == "find ARG -maxdepth ARG -iname ARG"


def test_long_option_with_value() -> None:
    assert template("grep --include=*.py -r foo .") == "grep --include ARG -r ARG ARG"
    assert same("grep --include=*.py foo .", "grep --include '*.c' bar dir")
    assert template("ls --color") == "ls --color"
    assert same("ls -- -x", "ls -- y")


def test_quoted_dash_word_is_an_argument() -> None:
    assert template("echo '-n'") == "echo ARG"
    assert template("echo -n") == "echo -n"


# --------------------------------------------------------------------------- arguments


def test_arguments_become_placeholders() -> None:
    assert template("cp a.txt /tmp/b") == "cp ARG ARG"
    assert same("cp a b", "cp 'c d' \"$HOME\"")
    assert not same("cp a b", "cp a")
    assert template("cd ~") == "cd ARG"


def test_signed_numbers_keep_the_sign() -> None:
    assert template("find . -mtime -14") == "find ARG -mtime -ARG"
    assert template("find . -size +100k") == "find ARG -size +ARG"
    assert template("find . -mtime 14") == "find ARG -mtime ARG"
    assert same("find . -mtime -14", "find /x -mtime -3")
    assert not same("find . -mtime -14", "find . -mtime +14")
    assert not same("find . -mtime -14", "find . -mtime 14")
    assert template("head -5 f") == "head -ARG ARG"
    assert template("xargs -0 rm") == "xargs -0 rm"  # -0 is a flag


def test_quoted_signed_number_keeps_its_sign() -> None:
    # NL2Bash's parser drops the sign of a quoted number; we do not copy that quirk.
    assert template("find . -mtime '-7'") == "find ARG -mtime -ARG"
    assert same("find . -mtime '-7'", "find /x -mtime -3")
    assert not same("find . -mtime '-7'", "find . -mtime 7")
    assert not same('find . -size "+10M"', "find . -size 10M")


def test_braces_semicolon_and_plus_are_kept() -> None:
    assert template("find . -exec rm {} \\;") == "find ARG -exec rm {} \\;"
    assert template("find . -exec rm {} ';'") == "find ARG -exec rm {} \\;"
    assert template("find . -exec rm {} +") == "find ARG -exec rm {} +"
    assert not same("find . -exec rm {} +", "find . -exec rm {} \\;")


def test_value_after_find_type_is_kept() -> None:
    assert template("find . -type f") == "find ARG -type f"
    assert not same("find . -type f", "find . -type d")
    assert same("find /a -type d", "find /b -type 'd'")


# --------------------------------------------------------------------------- old-style bundles


def test_tar_old_style_bundle_expands_into_flags() -> None:
    assert template("tar xvf a.tar") == "tar -x -v -f ARG"
    assert same("tar xvf a.tar", "tar -x -v -f b.tar")
    assert same("tar xvf a.tar", "tar -xvf b.tar")
    assert not same("tar xvf a.tar", "tar czf a.tar")  # extract is not create
    assert not same("tar xvf a.tar", "tar xf a.tar")


def test_old_style_values_follow_their_letters() -> None:
    # old style takes the values of f and b from the next words, in the letters' order
    assert template("tar cvfb a.tar 20 dir") == "tar -c -v -f ARG -b ARG ARG"
    assert same("tar cvfb a.tar 20 dir", "tar -c -v -f b.tar -b 10 src")
    assert not same("tar cvfb a.tar 20 dir", "tar -c -v -f -b b.tar 10 src")


def test_ps_bsd_bundle_expands_into_flags() -> None:
    assert template("ps aux") == "ps -a -u -x"
    assert same("ps aux | grep x", "ps -a -u -x | grep y")
    assert same("ps aux", "ps -aux")
    assert not same("ps aux", "ps ax")
    assert template("ps axo pid,cmd") == "ps -a -x -o pid,cmd"  # o takes the next word


def test_only_a_bare_letter_cluster_is_a_bundle() -> None:
    assert template("tar 'xvf' a.tar") == "tar ARG ARG"  # quoted: an operand, as for flags
    assert template("tar {} x") == "tar {} ARG"
    assert template("ps 123") == "ps ARG"
    assert same("ls aux", "ls b")  # only tar, ps, ar and jar take bundles


# --------------------------------------------------------------------------- kept values


def test_find_format_and_type_values_are_kept() -> None:
    assert template("find . -printf '%p\\n'") == "find ARG -printf '%p\\n'"
    assert same("find . -printf '%p\\n'", 'find /x -printf "%p\\n"')  # bash reads both alike
    assert not same("find . -printf '%p\\n'", "find . -printf '%s\\n'")
    assert template("find . -fprintf out.txt '%s %p'") == "find ARG -fprintf ARG '%s %p'"
    assert same("find . -fprintf a '%s'", "find . -fprintf b %s")
    assert not same("find . -fprintf a '%s'", "find . -fprintf a '%p'")
    assert same("find / -fstype nfs", "find /x -fstype 'nfs'")
    assert not same("find / -fstype nfs", "find / -fstype ext4")
    assert same(
        "find . -regextype posix-extended -regex x", "find . -regextype posix-extended -regex y"
    )
    assert not same("find . -regextype posix-extended -regex x", "find . -regextype emacs -regex x")


def test_date_format_is_kept() -> None:
    assert template("date +%Y-%m-%d") == "date +%Y-%m-%d"
    assert same("date +%s", 'date "+%s"')
    assert not same("date +%s", "date +%Y")
    assert same("date -d yesterday +%s", "date -d tomorrow +%s")  # the date itself is open


def test_stat_format_is_kept() -> None:
    assert template("stat -c %s f") == "stat -c %s ARG"
    assert same("stat -c %s f", "stat -c%s g")
    assert same("stat -c %s f", "stat -c '%s' g")
    assert not same("stat -c %s f", "stat -c %y f")
    assert same("stat --format=%s f", "stat --format %s g")
    assert not same("stat --format=%s f", "stat --format=%n f")


def test_choice_words_of_long_options_are_kept() -> None:
    assert template("ls --sort=size") == "ls --sort size"
    assert same("ls --sort=size", "ls --sort size")
    assert not same("ls --sort=size", "ls --sort=time")
    # --color takes a value only when attached: `ls --color dir` lists dir
    assert template("ls --color dir") == "ls --color ARG"
    assert not same("ls --color=always", "ls --color=never")
    assert same("ps -eo pid,comm", "ps -e -o pid,comm")
    assert not same("ps -eo pid,comm", "ps -eo pid,rss")


def test_value_with_an_expansion_is_open() -> None:
    assert template('find . -printf "$fmt"') == "find ARG -printf ARG"
    assert same('stat -c "$f" x', 'stat -c "$g" y')


def test_every_kept_value_option_says_why() -> None:
    from codefusion.scoring.metrics.bash import _KEPT_VALUES, _OLD_STYLE_BUNDLES

    for utility, options in _KEPT_VALUES.items():
        for option, spec in options.items():
            assert spec.why.strip(), (utility, option)
            assert option == "+" or option.startswith("-"), (utility, option)
    assert {"tar", "ps"} <= set(_OLD_STYLE_BUNDLES)


def test_utilities_outside_nl2bash_grammar_still_template() -> None:
    # NL2Bash's parser fails on utilities its grammar lacks; ours templates any utility.
    assert template("jq -r .name f.json") == "jq -r ARG ARG"
    assert same("jq -r .name f.json", "jq -r .id g.json")
    assert not same("jq -r .name f.json", "jq .name f.json")


# --------------------------------------------------------------------------- find / xargs


def test_find_missing_start_path_is_implicit() -> None:
    assert template("find -name x") == "find ARG -name ARG"
    assert same("find -name x", "find . -name y")
    assert same("find -L -type f", "find -L . -type f")
    assert template("find a b -type f") == "find ARG ARG -type f"


def test_find_or_and() -> None:
    assert template("find . -name a -o -name b") == "find ARG -name ARG -or -name ARG"
    assert same("find . -name a -o -name b", "find . -name a -or -name b")
    assert same("find . -type f -a -empty", "find . -type f -and -empty")
    assert template("find . \\( -name a -o -name b \\)") == (
        "find ARG \\( -name ARG -or -name ARG \\)"
    )


def test_find_exec_holds_a_nested_command() -> None:
    assert template("find . -exec ls -la {} \\;") == "find ARG -exec ls -l -a {} \\;"
    assert same("find . -exec sudo /bin/rm -f {} \\;", "find . -exec rm -f {} \\;")
    assert template("find . -exec grep -l x {} + -print") == (
        "find ARG -exec grep -l ARG {} + -print"
    )
    assert template("find . -execdir egrep x {} \\;") == "find ARG -execdir grep -E ARG {} \\;"
    assert not same("find . -exec rm {} \\;", "find . -exec rm -f {} \\;")


def test_xargs_replace_string_is_normalised_to_braces() -> None:
    assert template("xargs -I {} mv {} /dst") == "xargs -I {} mv {} ARG"
    assert same("ls | xargs -I % rm %", "ls | xargs -I {} rm {}")
    assert same("ls | xargs -i rm {}", "ls | xargs -I {} rm {}")  # -i means -I {}
    assert same("xargs -i cp {} /d", "xargs --replace cp {} /e")
    assert same("xargs -iX cp X /d", "xargs -IX cp X /e")
    assert template("xargs -0 -n 1 -I f grep -l x f") == "xargs -0 -n ARG -I {} grep -l ARG {}"
    assert not same("xargs -i cp {} /d", "xargs -i cp /d {}")


def test_xargs_without_a_replace_string_is_another_command() -> None:
    # without -i/-I xargs appends the input: `xargs cp {} /d` runs `cp {} /d ITEM...`
    assert template("xargs cp {} /d") == "xargs cp {} ARG"
    assert not same("xargs cp {} /d", "xargs -i cp {} /d")
    assert not same("ls | xargs rm", "ls | xargs -I {} rm {}")
    assert same("ls a | xargs rm", "ls b | xargs rm")
    assert same("xargs -n 1 echo", "xargs -n1 echo")
    assert template("xargs -0 -n 1 grep -l x") == "xargs -0 -n ARG grep -l ARG"
    assert template("xargs") == "xargs echo"


# --------------------------------------------------------------------------- structure


def test_command_substitution_is_templated_recursively() -> None:
    assert template("echo $(ls -la)") == "echo $( ls -l -a )"
    assert same("echo $(ls -la)", "echo `ls -la`")
    assert not same("echo $(ls)", "echo $(pwd)")
    assert template("cd $(dirname $(which python))") == "cd $( dirname $( which ARG ) )"


def test_process_substitution_is_templated_recursively() -> None:
    assert template("diff <(ls a) <(ls -l b)") == "diff <( ls ARG ) <( ls -l ARG )"
    assert not same("diff <(ls a) <(ls b)", "diff <(ls a) <(cat b)")


def test_redirects_are_dropped() -> None:
    assert template("ls > out 2>&1") == "ls"
    assert same("find / -name x 2>/dev/null", "find / -name x")
    assert same("sort < in > out", "sort")
    assert template("cat <<EOF\nhi\nEOF") == "cat"


def test_operators_are_kept() -> None:
    assert template("ls | wc -l") == "ls | wc -l"
    assert template("cd a && ls") == "cd ARG && ls"
    assert template("cd a || exit") == "cd ARG || exit"
    assert template("cd a; ls") == "cd ARG ; ls"
    assert not same("a | b", "a && b")
    assert not same("a || b", "a && b")
    assert same("cd a; ls;", "cd b ; ls")


def test_compound_commands() -> None:
    t = template("for f in $(ls); do echo $f; done")
    assert t == "for ARG in $( ls ) ; do echo ARG done"
    assert same("(cd a && make)", "(cd b && make)")
    assert template("VAR=$(date) ls") == "ASSIGN $( date ) ls"


# --------------------------------------------------------------------------- fallback


def test_string_fallback_when_neither_side_parses() -> None:
    bad = "grep foo <file> | wc -l"
    assert template(bad) is None
    assert not is_valid(bad)
    assert template_match(bad, "grep  foo <file>   | wc -l\n") == (True, "string")
    assert template_match(bad, "grep bar <file> | wc -l") == (False, "string")


def test_one_side_parses_is_a_template_mismatch() -> None:
    bad = "grep foo <file>"
    assert template_match("grep foo file", bad) == (False, "template")
    assert template_match(bad, "grep foo file") == (False, "template")


def test_is_valid_and_whitespace() -> None:
    assert is_valid("ls -la | wc -l\n")
    assert not is_valid("echo 'unbalanced")
    assert not is_valid("")
    assert not is_valid("   ")
    assert normalise_whitespace("  a \t b\n") == "a b"
    assert template("   ") is None


@pytest.mark.parametrize(
    "text",
    ["$(" * 400 + "ls" + ")" * 400, "`" * 101, "(" * 500, "echo " + "$(echo " * 150 + ")" * 150],
    ids=["dollar-paren", "backticks", "parens", "nested-echo"],
)
def test_deep_nesting_never_raises(text: str) -> None:
    assert template(text) is None or isinstance(template(text), str)
    ok, by = template_match(text, text)
    assert by in ("template", "string")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=80), st.text(max_size=80))
def test_fuzz_never_raises(a: str, b: str) -> None:
    t = template(a)
    assert t is None or isinstance(t, str)
    assert isinstance(is_valid(a), bool)
    ok, by = template_match(a, b)
    assert isinstance(ok, bool) and by in ("template", "string")
    # reflexivity: any command matches itself
    assert template_match(a, a)[0]


_SHELL_PIECES = (
    "find . -name x -exec {} \\; + | xargs -I % $( ) ` && ; -o sudo -n1 --a=b ' \" <( > 2>&1"
    " -type f -14 +3 egrep for do done in"
).split() + ["\n"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_SHELL_PIECES), max_size=25))
def test_fuzz_shell_like_never_raises(parts: list[str]) -> None:
    cmd = " ".join(parts)
    t = template(cmd)
    assert t is None or isinstance(t, str)
    assert template_match(cmd, cmd)[0]


# --------------------------------------------------------------------------- real data


def _bash(real_data_dir) -> dict[str, list[dict]]:
    path = real_data_dir / "benchmarks" / "BashBenchmarks.json"
    return json.loads(path.read_text(encoding="utf-8"))


def test_real_gold_vs_gold_is_perfect(real_data_dir, capsys) -> None:
    data = _bash(real_data_dir)
    for split in ("test", "train"):
        codes = [r["Code"] for r in data[split]]
        results = [template_match(c, c) for c in codes]
        assert all(ok for ok, _ in results), split
        if split == "test":
            n_template = sum(by == "template" for _, by in results)
            n_string = len(results) - n_template
            with capsys.disabled():
                print(
                    f"\n[bash test] gold-vs-gold 100%; decided by template {n_template}/"
                    f"{len(results)} ({100 * n_template / len(results):.1f}%), by string "
                    f"fallback {n_string} ({100 * n_string / len(results):.1f}%)"
                )
            assert n_string / len(results) < 0.03


def test_real_shuffled_gold_scores_low(real_data_dir, capsys) -> None:
    codes = [r["Code"] for r in _bash(real_data_dir)["test"]]
    shuffled = codes[:]
    random.Random(1234).shuffle(shuffled)
    acc = sum(template_match(p, g)[0] for p, g in zip(shuffled, codes, strict=True)) / len(codes)
    with capsys.disabled():
        print(f"\n[bash test] shuffled-gold template match: {100 * acc:.2f}%")
    assert acc < 0.15
