from fireact_bench.harness.agent.scoring import choice_letter, exact_match, f1_score, normalize_answer, score, yes_no


def test_normalization_is_fireacts():
    assert normalize_answer("The  Saimaa Gesture!") == "saimaa gesture"
    assert normalize_answer("An apple, a day") == "apple day"
    assert exact_match("the Beatles", "Beatles.") == 1.0
    assert exact_match(None, "x") == 0.0


def test_f1():
    assert f1_score("director screenwriter", "actor, director, screenwriter") == 2 * (1 * 2 / 3) / (1 + 2 / 3)
    assert f1_score("yes", "no") == 0.0
    assert f1_score("cats", "dogs") == 0.0


def test_prefix_rules():
    assert yes_no("Yes, because it is") == "yes" and yes_no("No.") == "no" and yes_no("Yesterday") is None
    assert [choice_letter(x) for x in ("B", "B.", "(c) text", "d) x", "E", "Because")] == ["B", "B", "C", "D", None, None]
    assert score("yesno", "yes it is", "yes")["em"] == 1.0
    assert score("choice", "A. bloats", "A")["em"] == 1.0 and score("choice", "B", "A")["em"] == 0.0
