"""ImageScope's checking stages on the real vLLM path (vLLM's CPU build) with a tiny chat VLM.

The model is the yes/no VLM of ``test_rerank_vllm``: its first token is always yes or no, which
one depending on the images. The evaluator's side-by-side picture and the verifier's candidate
images go through vLLM's multimodal inputs, and the verdicts agree with the same stages run
through transformers on the same weights.
"""

from __future__ import annotations

import pytest

from cir.resources import Resources
from cir.stages.base import Context
from cir.stages.evaluate import Evaluate
from cir.stages.verify_propositions import VerifyPropositions
from tests.vllm.test_rerank_vllm import gallery, states, vllm_spec, vlm  # noqa: F401 (fixtures)

pytestmark = pytest.mark.vllm

QUESTIONS = [["Is it red?", "yes"], ["Is there a stripe?", "no"]]


def run(stage, gallery, resources, with_questions=False):  # noqa: F811
    ctx = Context(gallery[0], resources, None)
    stage.setup(ctx)
    batch = states(gallery)
    for state in batch:
        state.trace[0].name = state.trace[0].stage = stage.instance
        if with_questions:
            state.data["questions"] = QUESTIONS
    return stage.run(batch, ctx)


def test_evaluate_and_verify_propositions_through_vllm_match_transformers(vlm, gallery):  # noqa: F811
    resources = Resources()
    local = {"backend": "transformers", "model": vlm}
    try:
        served = run(Evaluate(llm=vllm_spec(vlm, 1), top_n=3, tile_size=56, max_tokens=1),
                     gallery, resources)  # fmt: skip
        direct = run(Evaluate(llm=local, top_n=3, tile_size=56, max_tokens=1), gallery, Resources())
        for a, b in zip(served, direct, strict=True):
            assert a.record("evaluate").fallbacks == 0
            assert a.data["evaluate"]["verdicts"] == b.data["evaluate"]["verdicts"]
            assert a.ranking.ids == b.ranking.ids
        spec = vllm_spec(vlm, 1)
        verified = run(VerifyPropositions(llm=spec, top_n=4, max_tokens=1), gallery, resources,
                       with_questions=True)  # fmt: skip
        checked = run(VerifyPropositions(llm=local, top_n=4, max_tokens=1), gallery, Resources(),
                      with_questions=True)  # fmt: skip
        for a, b in zip(verified, checked, strict=True):
            assert a.record("verify_propositions").fallbacks == 0
            assert (
                a.data["verify_propositions"]["answers"] == b.data["verify_propositions"]["answers"]
            )
            assert a.ranking.ids == b.ranking.ids
        answers = [v for s in verified for v in s.data["verify_propositions"]["answers"].values()]
        assert len({tuple(a) for a in answers}) > 1  # the answers depend on the candidate image
        verdicts = [v for s in served for v in s.data["evaluate"]["verdicts"].values()]
        assert True in verdicts and False in verdicts
    finally:
        resources.clear()
