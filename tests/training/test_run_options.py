"""Options serious runs use: layer and hook selection, gradient accumulation, several seeds in
lockstep, keep-the-best, starting from an existing set, and the end-to-end KL term."""

import pytest
import torch

from circuit_atlas.training import (ArchitectureConfig, OptimConfig, TensorActivationSource,
                                    Trainer, to_transcoders)
from circuit_atlas.training.errors import TrainingConfigError
from circuit_atlas.training.seeds import SharedBatches, run_in_lockstep
from circuit_atlas.training.selection import (check_layers, merge_layer_choices, parse_hooks,
                                              parse_layers)
from circuit_atlas.training.synthetic import planted_data


def test_layer_lists_and_hook_names():
    assert parse_layers("2,5-7") == [2, 5, 6, 7]
    assert parse_layers(" 7, 2 ,2") == [2, 7] and parse_layers("all") == []
    for bad in ("2-", "a", "5-3", "-1"):
        with pytest.raises(TrainingConfigError, match="--layers"):
            parse_layers(bad)
    with pytest.raises(TrainingConfigError, match="layer 4 is out of range; model m has 4 "
                                                  "layers"):
        check_layers([1, 4], 4, "m")
    assert check_layers([], 3, "m") == [0, 1, 2]
    hooks = parse_hooks("blocks.3.mlp.hook_in", "blocks.3.mlp.hook_out")
    assert (hooks.input_hook, hooks.output_hook, hooks.layers) == ("mlp.hook_in",
                                                                   "mlp.hook_out", (3,))
    assert parse_hooks("blocks.1-2.hook_resid_mid", "hook_mlp_out").layers == (1, 2)
    with pytest.raises(TrainingConfigError, match="unknown hook point 'resid'"):
        parse_hooks("resid", "hook_mlp_out")
    with pytest.raises(TrainingConfigError, match="different layers"):
        parse_hooks("blocks.1.mlp.hook_in", "blocks.2.mlp.hook_out")
    with pytest.raises(TrainingConfigError, match="give the layers in one place"):
        merge_layer_choices([1], (2,))


def _data():
    return planted_data(4096, 2, 8, 12, seed=3)


def _arch(activation="topk", **kw):
    return ArchitectureConfig(kind="plt", n_layers=2, d_model=8, n_features=16,
                              activation=activation, k=2 if "topk" in activation else None, **kw)


def _optim(**kw):
    base = dict(steps=12, batch_size=128, lr=3e-3, log_every=4, checkpoint_every=4,
                mixed_precision="none", threshold_fit_batches=2)
    base.update(kw)
    return OptimConfig(**base)


def test_gradient_accumulation_equals_one_big_batch():
    data = _data()
    runs = []
    for micro in (1, 4):
        source = TensorActivationSource(data.inputs, data.targets, seed=0)
        trainer = Trainer(_arch(), _optim(steps=3, grad_accumulation=micro), source,
                          device="cpu", progress=False)
        runs.append(trainer.run().stack.state_dict())
    for key in runs[0]:
        torch.testing.assert_close(runs[0][key], runs[1][key], rtol=1e-4, atol=1e-6,
                                   msg=key)


def test_seeds_in_lockstep_match_separate_runs_and_resume(tmp_path):
    data = _data()
    separate = []
    for seed in (0, 1):
        source = TensorActivationSource(data.inputs, data.targets, seed=9)
        separate.append(Trainer(_arch(), _optim(seed=seed), source, device="cpu",
                                progress=False).run().stack.state_dict())

    def lockstep(stop_after=None):
        shared = SharedBatches(TensorActivationSource(data.inputs, data.targets, seed=9))
        trainers = [Trainer(_arch(), _optim(seed=seed), shared.consumer(), device="cpu",
                            progress=False, out_dir=tmp_path / f"seed-{seed}")
                    for seed in (0, 1)]
        if stop_after is not None:  # an interrupted run: both seeds stop at the same step
            for trainer in trainers:
                trainer.start()
            while trainers[0].step < stop_after:
                for trainer in trainers:
                    trainer.advance(stop_after)
            return None
        return run_in_lockstep(trainers, progress=False)

    lockstep(stop_after=8)  # checkpoints at step 8
    results = lockstep()    # resumes both seeds from step 8
    assert [r.step for r in results] == [12, 12]
    assert not torch.equal(results[0].stack.W_enc, results[1].stack.W_enc)
    for result, expected in zip(results, separate):
        for key, value in result.stack.state_dict().items():
            assert torch.equal(value, expected[key]), key


def test_keep_best_exports_the_best_evaluated_state(tmp_path):
    data = _data()
    values = iter([0.5, 0.2, 0.3])  # the evaluation at step 8 is the best

    def evaluator(stack):
        return {"fvu": next(values)}

    trainer = Trainer(_arch(), _optim(), TensorActivationSource(data.inputs, data.targets),
                      device="cpu", progress=False, out_dir=tmp_path, evaluator=evaluator,
                      eval_every=4, keep_best="fvu")
    result = trainer.run()
    assert result.best_step == 8 and (tmp_path / "best" / "model.safetensors").exists()
    assert not torch.equal(result.stack.W_enc, trainer.stack.W_enc)  # not the last state
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "best" / "model.safetensors"))
    for key, value in result.stack.state_dict().items():  # the result is the saved best state
        assert torch.equal(value.cpu(), saved[key]), key
    with pytest.raises(TrainingConfigError, match="--keep-best needs held-out evaluations"):
        Trainer(_arch(), _optim(), TensorActivationSource(data.inputs, data.targets),
                device="cpu", progress=False, keep_best="fvu")


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_starting_from_an_exported_set_reproduces_it(activation):
    from circuit_atlas.training.init import BaseLayer, BaseSet, base_initializer

    data = _data()
    first = Trainer(_arch(activation), _optim(), TensorActivationSource(data.inputs,
                                                                        data.targets),
                    device="cpu", progress=False).run().stack
    tc = to_transcoders(first, input_hook="a", output_hook="b")
    layers = {n: BaseLayer(tc.encoder_weight(n), tc.encoder_bias(n), tc.decoder_bias(n),
                           tc.decoder_rows_all(n, torch.arange(16))[:, 0], tc.threshold(n),
                           None) for n in range(2)}
    base = BaseSet("set", "plt", tc.activation_name, tc.k, 2, 16, 8, "a", "b", False, layers)
    # a new run (other seed, so other scales and random start) begins exactly at that set (it
    # keeps the set's decoder scale, as `train --init-from` does by default)
    second = Trainer(_arch(activation, normalize_decoder=False), _optim(seed=5, steps=1),
                     TensorActivationSource(data.inputs, data.targets, seed=4), device="cpu",
                     progress=False, initializer=base_initializer(base, [0, 1]))
    second.initialise_from_data()
    resumed = to_transcoders(second.stack, input_hook="a", output_hook="b")
    x = data.inputs[:300]
    for layer in range(2):
        acts = {layer: tc.encode(layer, x[:, layer])}
        again = {layer: resumed.encode(layer, x[:, layer])}
        torch.testing.assert_close(again[layer], acts[layer], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(resumed.reconstruct(layer, again, x[:, layer]),
                                   tc.reconstruct(layer, acts, x[:, layer]),
                                   rtol=1e-4, atol=1e-5)


def test_end_to_end_kl_matches_an_independent_computation_and_has_gradients(tiny_lm,
                                                                             word_texts):
    from circuit_atlas.io.corpus import open_corpus
    from circuit_atlas.training.end_to_end import EndToEndLoss
    from circuit_atlas.training.streaming import pad_windows
    from circuit_atlas.training.architecture import TranscoderStack

    stack = TranscoderStack(ArchitectureConfig(kind="plt", n_layers=1, d_model=16,
                                               n_features=24, activation="topk", k=4), seed=0)
    with torch.no_grad():
        stack.W_dec.normal_(0, 0.3)
        stack.input_scale.fill_(2.0)
        stack.target_scale.fill_(0.5)
    loss = EndToEndLoss(tiny_lm, open_corpus(word_texts(6, seed=2, max_words=8)),
                        input_hook="mlp.hook_in", output_hook="mlp.hook_out", layers=[1],
                        context_length=16, n_windows=3)
    windows = [loss.windows.next_window() for _ in range(3)]
    tokens, mask = pad_windows(windows, 0)
    kl = loss.kl(stack, tokens, mask)
    kl.backward()
    assert stack.W_dec.grad.abs().sum() > 0 and stack.W_enc.grad.abs().sum() > 0
    # independently: each window alone through the HF model, layer 1's MLP output replaced
    mlp = tiny_lm.hf_model.model.layers[1].mlp
    total, count = 0.0, 0
    for window in windows:
        with torch.no_grad():
            clean = torch.log_softmax(tiny_lm.hf_model(window[None]).logits[0].float(), -1)

        def replace(module, args, output):
            x = args[0][0] / 2.0
            pre = x @ stack.W_enc[0].T + stack.b_enc[0]
            values, idx = pre.topk(4, dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, idx, values)
            recon = (acts @ stack.W_dec[0] + stack.b_dec[0]) * 0.5
            recon[0] = output[0, 0]  # position 0 keeps its value
            return recon[None]

        handle = mlp.register_forward_hook(replace)
        try:
            with torch.no_grad():
                edited = torch.log_softmax(tiny_lm.hf_model(window[None]).logits[0].float(), -1)
        finally:
            handle.remove()
        total += float((clean.exp() * (clean - edited)).sum())
        count += window.numel()
    assert abs(kl.item() - total / count) < 1e-5


def test_budget_picks_a_batch_that_leaves_enough_steps():
    from circuit_atlas.training.config import budget

    assert budget(3_021_358) == (5901, 512)          # the demo comparison
    assert budget() == (8000, 512)                   # the default budget, 4,096,000 tokens
    assert budget(100_000_000) == (24414, 4096)      # big budgets keep big batches
    assert budget(10_000) == (39, 256)
    assert budget(steps=10) == (10, 4096)
    assert budget(1_000_000, batch_size=100) == (10000, 100)
    with pytest.raises(TrainingConfigError, match="not both"):
        budget(1000, steps=5)
