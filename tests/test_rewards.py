"""Rewards against hand-computed values. One class per reward, one commented row per case."""

import json

import pytest

from chexreason.labels import CHEXPERT_LABELS
from chexreason.parsing import parse_completion
from chexreason.rewards import (
    CHEXPERT_PREVALENCE,
    NuancedReward,
    NuancedRewardConfig,
    approx_token_count,
    count_labels,
    get_reward,
    hard_reward_score,
    jaccard,
    label_prevalence,
    make_format_reward,
    make_hard_reward,
    nuanced_reward_weights,
    reward_from_recipe,
)

LONG = "<think>" + "word " * 300 + "</think>"  # 300+ approximate tokens: past the 250-token threshold
SHORT = "<think>Short.</think>"


class TestHardReward:
    reward = staticmethod(make_hard_reward(length_threshold=250, length_penalty=0.1))

    @pytest.mark.parametrize(
        ("completion", "truth", "expected"),
        [
            # Valid, long, exact: Jaccard 1, no penalty.
            (LONG + "<solution>Edema, Cardiomegaly</solution>", ["Cardiomegaly", "Edema"], 1.0),
            # Valid, long, one of two labels: 1/2.
            (LONG + "<solution>Edema</solution>", ["Cardiomegaly", "Edema"], 0.5),
            # Valid, long, one right one wrong out of three distinct: 1/3.
            (LONG + "<solution>Edema, Fracture</solution>", ["Cardiomegaly", "Edema"], 1 / 3),
            # Valid but shorter than 250 tokens: J − λ_len.
            (SHORT + "<solution>Edema</solution>", ["Edema"], 0.9),
            # Short and wrong: may go negative (0 − 0.1).
            (SHORT + "<solution>Fracture</solution>", ["Edema"], -0.1),
            # Invalid format (no think block): 0 even though the label is right.
            ("<solution>Edema</solution>", ["Edema"], 0.0),
            # Text outside the blocks makes it invalid: 0.
            (LONG + "<solution>Edema</solution> done", ["Edema"], 0.0),
            # Unparseable: 0.
            (LONG, ["Edema"], 0.0),
            # Synonyms in the answer and the ground truth are normalised before the Jaccard.
            (LONG + "<solution>effusion</solution>", ["Pleural_Effusion"], 1.0),
        ],
    )
    def test_table(self, completion, truth, expected):
        assert self.reward([completion], [truth]) == [pytest.approx(expected)]

    def test_token_count_comes_from_completion_ids(self):
        text = SHORT + "<solution>Edema</solution>"
        # The trainer's token ids decide the length, not the text: 300 ids -> no penalty; 10 -> penalty.
        assert self.reward([text], [["Edema"]], completion_ids=[list(range(300))]) == [1.0]
        assert self.reward([text], [["Edema"]], completion_ids=[list(range(10))]) == [pytest.approx(0.9)]

    def test_trl_call_signature(self):
        # TRL passes prompts, completion_ids and more; extra dataset columns must be tolerated.
        out = self.reward(
            prompts=["p"],
            completions=[LONG + "<solution>Edema</solution>"],
            completion_ids=[[1] * 260],
            ground_truth=[["Edema"]],
            trainer_state=None,
            log_metric=lambda *a: None,
            log_extra=None,
            image_id=["x"],
        )
        assert out == [1.0]

    def test_scalar_core(self):
        parsed = parse_completion(SHORT + "<solution>Edema</solution>")
        assert hard_reward_score(parsed, {"Edema"}, n_tokens=5, length_threshold=4, length_penalty=0.3) == 1.0
        assert hard_reward_score(parsed, {"Edema"}, n_tokens=3, length_threshold=4, length_penalty=0.3) == 0.7

    def test_mismatched_lengths_and_bad_truth(self):
        with pytest.raises(ValueError, match="ground_truth"):
            self.reward(["a", "b"], [["Edema"]])
        with pytest.raises(ValueError, match="not a CheXpert label"):
            self.reward(["a"], [["Hernia"]])


def test_jaccard_and_token_count():
    assert jaccard({"A", "B"}, {"B", "C"}) == pytest.approx(1 / 3)
    assert jaccard(set(), set()) == 1.0
    assert approx_token_count("one two, three.") == 5


class TestFormatReward:
    def test_table(self):
        reward = make_format_reward()
        completions = [
            SHORT + "<solution>Edema</solution>",  # valid: 1
            "<solution>Edema</solution>",  # no reasoning: 0
            SHORT + "<solution>Edema",  # unclosed: 0
        ]
        assert reward(completions) == [1.0, 0.0, 0.0]
        # Under the labels-only protocol, the bare block is the valid form.
        assert make_format_reward("labels_only")(["<solution>Edema</solution>"]) == [1.0]


FP_FRACTURE = 5 + 20 * 0.018 / 0.591  # frequency-weighted: rare label, cheap mistake
FP_SUPPORT = 25.0  # the most frequent label costs the most


class TestNuancedReward:
    @pytest.mark.parametrize(
        ("completion", "truth", "expected"),
        [
            # Exact match: +100, recall credit 30·1, precision credit 20·1.
            (SHORT + "<solution>Cardiomegaly</solution>", ["Cardiomegaly"], 150.0),
            # One of two right plus one wrong: 30·1/2 + 20·1/2, minus Fracture's false-positive cost.
            (SHORT + "<solution>Edema, Fracture</solution>", ["Edema", "Cardiomegaly"], 25.0 - FP_FRACTURE),
            # A wrong Support Devices costs the maximum false-positive penalty: 30 + 10 − 25.
            (SHORT + "<solution>Edema, Support Devices</solution>", ["Edema"], 15.0),
            # An invalid (non-CheXpert) label: −100, though the CheXpert labels match exactly.
            (SHORT + "<solution>Edema, Hernia</solution>", ["Edema"], 50.0),
            # A duplicate label: −25.
            (SHORT + "<solution>Edema, edema</solution>", ["Edema"], 125.0),
            # Text outside the blocks: −20.
            ("Answer: " + SHORT + "<solution>Edema</solution>", ["Edema"], 130.0),
            # Parseable but malformed (no think block): −50.
            ("<solution>Edema</solution>", ["Edema"], 100.0),
            # Unparseable: −100 and nothing else.
            ("I am not sure.", ["Edema"], -100.0),
            # Nothing right: partial 0, false positive for No Finding (5 + 20·0.125/0.591).
            (SHORT + "<solution>No Finding</solution>", ["Edema"], -(5 + 20 * 0.125 / 0.591)),
        ],
    )
    def test_table_with_empty_window(self, completion, truth, expected):
        assert NuancedReward()([completion], [truth]) == [pytest.approx(expected)]

    def _collapsed(self, n: int) -> NuancedReward:
        # n predictions of Support Devices on images whose truth is Edema.
        reward = NuancedReward()
        reward([SHORT + "<solution>Support Devices</solution>"] * n, [["Edema"]] * n)
        return reward

    def test_mode_collapse_and_repetition(self):
        reward = self._collapsed(20)
        # Support Devices fills 100% of the window (> 70%: collapse −50) and exceeds its true share (0%)
        # by more than 0.2 (repetition −30): 150 − 80, even though this prediction is right.
        assert reward([SHORT + "<solution>Support Devices</solution>"], [["Support Devices"]]) == [70.0]
        # A prediction without the collapsed label is not penalised.
        assert reward([SHORT + "<solution>Edema</solution>"], [["Edema"]]) == [150.0]

    def test_no_collapse_judgement_before_min_window(self):
        reward = self._collapsed(19)
        assert reward([SHORT + "<solution>Support Devices</solution>"], [["Support Devices"]]) == [150.0]

    def test_window_is_bounded(self):
        reward = NuancedReward(NuancedRewardConfig(window_size=100))
        reward([SHORT + "<solution>Edema</solution>"] * 150, [["Edema"]] * 150)
        assert len(reward.window) == 100

    def test_state_survives_resume(self):
        reward = self._collapsed(25)
        resumed = NuancedReward()
        resumed.load_state_dict(reward.state_dict())
        args = ([SHORT + "<solution>Support Devices</solution>"], [["Support Devices"]])
        assert resumed(*args) == reward(*args) == [70.0]

    def test_parts_are_logged(self):
        logged = {}
        NuancedReward()(
            [SHORT + "<solution>Edema, Fracture</solution>"],
            [["Edema"]],
            log_metric=lambda name, value: logged.__setitem__(name, value),
        )
        assert logged["nuanced/match"] == 0.0
        assert logged["nuanced/partial"] == pytest.approx(30 + 10)
        assert logged["nuanced/false_positive"] == pytest.approx(FP_FRACTURE)
        assert logged["nuanced/format"] == 0.0 and logged["nuanced/collapse"] == 0.0

    def test_config_is_validated(self):
        with pytest.raises(ValueError, match="label_prevalence lacks"):
            NuancedRewardConfig(label_prevalence={"Edema": 0.3})
        with pytest.raises(ValueError, match="min_window"):
            NuancedRewardConfig(min_window=200, window_size=100)


class TestRegistry:
    def test_names(self):
        right, wrong = [LONG + "<solution>Edema</solution>"], [LONG + "<solution>Fracture</solution>"]
        for name in ("hard", "nuanced", "format"):
            reward, truth = get_reward(name), [["Edema"]]  # as TRL calls it: by keyword
            assert reward(completions=right, ground_truth=truth) >= reward(completions=wrong, ground_truth=truth)
            assert reward(completions=right, ground_truth=truth) > reward(completions=["no"], ground_truth=truth)
        assert get_reward("hard").__name__ == "hard_reward"
        assert get_reward("nuanced").__name__ == "nuanced_reward"

    def test_recipe_options_reach_only_the_rewards_that_take_them(self):
        hard = reward_from_recipe("hard", protocol="think_solution", length_threshold=1000, length_penalty=0.5)
        assert hard([LONG + "<solution>Edema</solution>"], [["Edema"]]) == [0.5]  # 300 words < 1,000: pays 0.5
        assert reward_from_recipe("nuanced", length_threshold=1000).__name__ == "nuanced_reward"
        with pytest.raises(ValueError, match="unknown reward 'hardd'"):
            reward_from_recipe("hardd", protocol="think_solution")

    def test_each_nuanced_reward_owns_its_window(self):
        a, b = get_reward("nuanced"), get_reward("nuanced")
        a([SHORT + "<solution>Edema</solution>"], [["Edema"]])
        assert len(a.window) == 1 and len(b.window) == 0

    def test_options_reach_the_factory(self):
        reward = get_reward("hard", length_threshold=1, length_penalty=0.5)
        assert reward([SHORT + "<solution>Edema</solution>"], [["Edema"]]) == [1.0]

    def test_unknown_name(self):
        with pytest.raises(ValueError, match="choose one of"):
            get_reward("accuracy")


class TestModuleLevelRewards:
    """`from chexreason.rewards import hard_reward, format_reward`: TRL-style functions with the recipe defaults."""

    COMPLETIONS = (
        SHORT + "<solution>Edema</solution>",  # valid, exact, far under 250 tokens: 1 − λ_len (0.1)
        "<think>" + "word " * 200 + "</think><solution>Edema</solution>",  # ~215 tokens, still under 250: 0.9
        LONG + "<solution>Edema, Fracture</solution>",  # valid, past the threshold: Jaccard 1/2, no penalty
        "<solution>Edema</solution>",  # no reasoning block: invalid, 0
    )
    TRUTH = (["Edema"],) * 4

    def test_hard_reward_is_the_factorys_with_the_recipe_defaults(self):
        from chexreason.rewards import hard_reward

        factory = make_hard_reward(length_threshold=250, length_penalty=0.1, protocol="think_solution")
        scores = hard_reward(self.COMPLETIONS, self.TRUTH)
        assert scores == factory(self.COMPLETIONS, self.TRUTH) == pytest.approx([0.9, 0.9, 0.5, 0.0])
        # TRL's keyword call, with the columns and extras it passes.
        assert hard_reward(completions=self.COMPLETIONS, ground_truth=self.TRUTH, prompts=["p"] * 4) == scores
        assert hard_reward.__name__ == "hard_reward"

    def test_format_reward_is_the_factorys(self):
        from chexreason.rewards import format_reward

        scores = format_reward(self.COMPLETIONS, ground_truth=self.TRUTH)
        assert scores == make_format_reward("think_solution")(self.COMPLETIONS) == [1.0, 1.0, 1.0, 0.0]
        assert format_reward.__name__ == "format_reward"


def _rows(n_edema: int, n_devices: int, n: int) -> list[list[str]]:
    """`n` ground-truth rows: the first `n_edema` hold Edema, the first `n_devices` Support Devices, the rest
    Fracture."""
    return [["Edema"] * (i < n_edema) + ["Support Devices"] * (i < n_devices) or ["Fracture"] for i in range(n)]


class TestLabelPrevalence:
    """The nuanced reward's false-positive weights, derived from the RL split's label counts."""

    def test_counts_are_per_label_over_all_fourteen(self):
        counts, n_rows = count_labels([["Edema"], ["edema", "Cardiomegaly"], ["pleural_effusion"], ["Edema"]])
        assert n_rows == 4 and set(counts) == set(CHEXPERT_LABELS)
        # Names normalise; a row counts a label once.
        assert counts["Edema"] == 3 and counts["Pleural Effusion"] == 1 and counts["Cardiomegaly"] == 1
        assert counts["Fracture"] == 0

    def test_prevalence_is_add_alpha_smoothed(self):
        counts = {"Edema": 3, "Cardiomegaly": 1}  # manifest.json style: labels never seen are left out
        prevalence = label_prevalence(counts, n_rows=8, smoothing=1.0)
        assert set(prevalence) == set(CHEXPERT_LABELS)
        assert prevalence["Edema"] == pytest.approx((3 + 1) / (8 + 2))
        # A label never seen gets a small, non-zero prevalence: (0 + α) / (n + 2α).
        assert prevalence["Fracture"] == pytest.approx(1 / 10) and prevalence["Fracture"] > 0
        assert label_prevalence(counts, n_rows=8, smoothing=0.5)["Fracture"] == pytest.approx(0.5 / 9)
        # Smoothing fades with the size of the split.
        assert label_prevalence({"Edema": 3000}, n_rows=8000)["Edema"] == pytest.approx(3000 / 8000, rel=1e-3)
        # No rows at all: every label at 1/2, the prior.
        assert set(label_prevalence({}, n_rows=0).values()) == {0.5}

    def test_more_positives_cost_more(self):
        # Monotone, whatever the labels: strictly more positives -> strictly larger false-positive cost.
        counts = {label: 7 * i for i, label in enumerate(reversed(CHEXPERT_LABELS))}
        config = NuancedRewardConfig(label_prevalence=label_prevalence(counts, n_rows=100))
        by_count = sorted(CHEXPERT_LABELS, key=counts.__getitem__)
        costs = [config.false_positive_cost(label) for label in by_count]
        assert costs == sorted(costs) and len(set(costs)) == len(costs)
        assert costs[-1] == pytest.approx(config.false_positive_max)  # the most frequent label costs the most
        assert config.false_positive_min < costs[0] < config.false_positive_max  # never seen: cheap, not free

    def test_bad_counts_are_rejected(self):
        with pytest.raises(ValueError, match="not CheXpert labels"):
            label_prevalence({"Hernia": 1}, n_rows=2)
        with pytest.raises(ValueError, match="more positives than rows"):
            label_prevalence({"Edema": 3}, n_rows=2)
        with pytest.raises(ValueError, match="smoothing"):
            label_prevalence({"Edema": 1}, n_rows=2, smoothing=0.0)
        with pytest.raises(ValueError, match="not a CheXpert label"):
            count_labels([["Hernia"]])

    def test_nuanced_reward_takes_a_runs_prevalence(self):
        counts, n_rows = count_labels(_rows(n_edema=2, n_devices=0, n=10))  # Support Devices never seen here
        prevalence = label_prevalence(counts, n_rows)
        reward = reward_from_recipe("nuanced", protocol="think_solution", label_prevalence=prevalence)
        assert dict(reward.config.label_prevalence) == prevalence
        # A wrong Support Devices now costs little (it is rare in this split), not CheXpert's maximum of 25.
        expected = 30 + 10 - reward.config.false_positive_cost("Support Devices")
        assert expected > 15.0
        scores = reward([SHORT + "<solution>Edema, Support Devices</solution>"], [["Edema"]])
        assert scores == [pytest.approx(expected)]
        # Outside a run the default stays CheXpert's train prevalence; the other rewards ignore the option.
        assert dict(NuancedReward().config.label_prevalence) == CHEXPERT_PREVALENCE
        assert reward_from_recipe("hard", label_prevalence=prevalence).__name__ == "hard_reward"

    def test_weights_record(self):
        counts, n_rows = count_labels(_rows(n_edema=3, n_devices=1, n=6))
        config = NuancedRewardConfig(label_prevalence=label_prevalence(counts, n_rows, smoothing=1.0))
        record = nuanced_reward_weights(config, counts, n_rows, smoothing=1.0)
        json.dumps(record)  # JSON-ready
        assert record["n_rows"] == 6 and record["smoothing"] == 1.0
        assert list(record["labels"]) == list(CHEXPERT_LABELS)
        edema = record["labels"]["Edema"]
        assert edema == {"count": 3, "prevalence": pytest.approx(4 / 8), "false_positive_cost": pytest.approx(25.0)}
        assert record["labels"]["Fracture"]["count"] == 3

    def test_resume_keeps_the_runs_weights_and_warns_on_a_mismatch(self, caplog):
        prevalence = label_prevalence(*count_labels(_rows(n_edema=2, n_devices=1, n=10)))
        reward = NuancedReward(label_prevalence=prevalence)
        reward([SHORT + "<solution>Edema</solution>"] * 3, [["Edema"]] * 3)
        state = json.loads(json.dumps(reward.state_dict()))  # as written into a checkpoint
        resumed = NuancedReward(label_prevalence=prevalence)  # a resumed run rebuilds them from the same split
        with caplog.at_level("WARNING", logger="chexreason.rewards"):
            resumed.load_state_dict(state)
        assert len(resumed.window) == 3 and not caplog.records
        # Weights from another split: the window is restored, the new weights kept, and the mix is not silent.
        other = NuancedReward()
        with caplog.at_level("WARNING", logger="chexreason.rewards"):
            other.load_state_dict(state)
        assert len(other.window) == 3 and dict(other.config.label_prevalence) == CHEXPERT_PREVALENCE
        assert "false-positive weights differ" in caplog.text
        # A checkpoint from before the weights were saved still loads, quietly.
        caplog.clear()
        other.load_state_dict({k: v for k, v in state.items() if k != "label_prevalence"})
        assert len(other.window) == 3 and not caplog.records
