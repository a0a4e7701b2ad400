"""`Contrastive`: the survey's framework, checked against the named methods and the papers' rules."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kcl
from kcl import losses
from kcl.methods import Contrastive, MoCoV2, SimCLR
from tests.methods import checks

SMALL = {"projection_hidden_dims": (32,), "projection_dim": 16}
INSTANCES = 20


def views_batch(batch=8, seed=0, index=False):
    data = {"views": checks.random_views(batch, seed=seed)}
    if index:
        data["index"] = (np.arange(batch) * 2 + seed) % INSTANCES
    return data


def bank_model(**kwargs):
    return Contrastive(
        checks.tiny_encoder(), key_encoder="memory_bank", loss="nce", num_instances=INSTANCES,
        num_negatives=16, temperature=0.2, **SMALL, **kwargs,
    )


def fit(model, batches):
    model.compile(optimizer=checks.sgd())
    return model.fit(tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda *parts: np.stack(parts), *batches)), verbose=0).history["loss"][0]


def assert_same_weights(named, composed):
    assert len(named) == len(composed)
    for a, b in zip(named, composed):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)


# ------------------------------------------------------------ equivalence
def test_simclr_through_contrastive_gives_the_same_losses_and_updates():
    keras.utils.set_random_seed(0)
    named = SimCLR(checks.tiny_encoder(), temperature=0.5, **SMALL)
    composed = Contrastive(checks.tiny_encoder(), loss="nt_xent", temperature=0.5, **SMALL)
    composed.encoder.set_weights(named.encoder.get_weights())
    composed.query_heads[0].set_weights(named.projector.get_weights())
    batches = [views_batch(seed=s) for s in range(3)]
    np.testing.assert_allclose(fit(composed, batches), fit(named, batches), rtol=1e-6)
    assert_same_weights(named.encoder.weights + named.projector.weights,
                        composed.encoder.weights + composed.query_heads[0].weights)


def test_mocov2_through_contrastive_gives_the_same_losses_updates_queue_and_key_network():
    keras.utils.set_random_seed(0)
    settings = {"queue_size": 32, "temperature": 0.2, "momentum": 0.9, **SMALL}
    named = MoCoV2(checks.tiny_encoder(), **settings)
    composed = Contrastive(checks.tiny_encoder(), key_encoder="momentum", projection_batch_norm=False, **settings)
    assert composed.negatives == "queue" and composed.loss_name == "info_nce"
    for mine, theirs in ((composed.encoder, named.encoder), (composed.query_heads[0], named.projector),
                         (composed.key_encoder, named.key_encoder), (composed.key_heads[0], named.key_projector),
                         (composed.queue, named.queue)):
        mine.set_weights(theirs.get_weights())
    batches = [views_batch(seed=s) for s in range(3)]
    np.testing.assert_allclose(fit(composed, batches), fit(named, batches), rtol=1e-6)
    # Every variable: encoder, head, key network (EMA), queue and pointer.
    assert_same_weights(named.weights, composed.weights)
    assert int(composed.queue.pointer.numpy()) == 24


# ------------------------------------------------------------ memory bank
def test_memory_bank_rows_change_only_at_the_indices_of_the_batch():
    keras.utils.set_random_seed(0)
    model = bank_model()
    before = model.bank.bank.numpy().copy()
    batch = views_batch(index=True)
    fit(model, [batch])
    after = model.bank.bank.numpy()
    index = batch["index"]
    untouched = np.setdiff1d(np.arange(INSTANCES), index)
    np.testing.assert_array_equal(after[untouched], before[untouched])
    assert (np.abs(after[index] - before[index]).max(axis=1) > 1e-4).all()
    np.testing.assert_allclose(np.linalg.norm(after, axis=1), 1.0, rtol=1e-5)


def test_memory_bank_update_is_the_papers_momentum_rule_on_the_queries():
    keras.utils.set_random_seed(0)
    model = bank_model(bank_momentum=0.5)
    model.compile(optimizer=keras.optimizers.SGD(0.0))  # no weight change: q is the same after the step
    batch = views_batch(index=True)
    q = model.compute_ssl_loss(list(batch["views"]), index=batch["index"], training=True)["query"].numpy()
    before = model.bank.bank.numpy().copy()
    model.fit(tf.data.Dataset.from_tensors(batch), verbose=0)
    mixed = 0.5 * before[batch["index"]] + 0.5 * q
    expected = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
    # The step's BN runs in training mode over the same batch, as the call above.
    np.testing.assert_allclose(model.bank.bank.numpy()[batch["index"]], expected, rtol=1e-4, atol=1e-5)


def test_distributed_step_with_a_memory_bank_equals_single_device_step():
    checks.check_distributed_equivalence(bank_model, views_batch(index=True), steps=2)


def test_distributed_step_with_momentum_queue_and_triplet_loss_equals_single_device_step():
    def build():
        return Contrastive(checks.tiny_encoder(), key_encoder="momentum", loss="triplet", queue_size=16,
                           momentum=0.9, **SMALL)
    checks.check_distributed_equivalence(build, views_batch(), steps=2)


def test_memory_bank_needs_indices_in_range():
    model = bank_model()
    model.compile(optimizer=checks.sgd())
    with pytest.raises(ValueError, match="instance index of each example"):
        model.fit(tf.data.Dataset.from_tensors(views_batch()), verbose=0)
    bad = views_batch(index=True)
    bad["index"] = bad["index"] + INSTANCES
    with pytest.raises(ValueError, match=r"Instance indices must be in \[0, 20\)"):
        model.fit(tf.data.Dataset.from_tensors(bad), verbose=0)
    with pytest.raises(ValueError, match="num_instances=None"):
        Contrastive(checks.tiny_encoder(), key_encoder="memory_bank")


# ----------------------------------------------------------- distillation
def test_distillation_gradients_never_reach_the_teacher():
    keras.utils.set_random_seed(0)
    teacher = checks.tiny_encoder()
    teacher_weights = [w.numpy().copy() for w in teacher.weights]
    model = Contrastive(checks.tiny_encoder(), key_encoder=teacher, **SMALL)
    assert model.key_kind == "teacher" and model.negatives == "batch"
    trainable = {id(v) for v in model.trainable_variables}
    assert not any(id(w) in trainable for w in teacher.weights)
    assert any(id(w) in trainable for w in model.key_projector.weights)  # its projection learns
    batch = views_batch()
    variables = [w.value for w in teacher.weights]
    with tf.GradientTape() as tape:
        tape.watch(variables)  # watched explicitly: the teacher's weights are not trainable
        loss = model.compute_ssl_loss(list(batch["views"]), training=True)["loss"]
    assert all(g is None for g in tape.gradient(loss, variables))
    fit(model, [batch, views_batch(seed=1)])
    for w, start in zip(teacher.weights, teacher_weights):
        np.testing.assert_array_equal(w.numpy(), start, err_msg=w.path)  # BN statistics too


def test_distillation_from_a_zoo_preset_and_the_save_load_round_trip(tmp_path):
    encoder = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, strides=2),
                                keras.layers.GlobalAveragePooling2D()])
    model = Contrastive(encoder, key_encoder=kcl.zoo.load("simclr_r18_fmnist"), **SMALL)
    assert model.teacher.output_shape[-1] == 128 and not model.teacher.trainable_weights
    images = checks.random_images(4, size=28)
    clone = checks.check_config_round_trip(model)
    assert clone.key_kind == "teacher"
    checks.check_save_load(model, images, tmp_path)


# ------------------------------------------------------------- heads, pairs
def test_quantisation_and_contextualisation_heads_train_and_add_the_diversity_term():
    keras.utils.set_random_seed(0)
    model = Contrastive(checks.tiny_encoder(), heads=("contextualisation", "projection", "quantisation"),
                        context_units=8, num_codebooks=2, codebook_size=4, diversity_weight=1.0, **SMALL)
    batch = views_batch()
    checks.check_fit_step(lambda: model, batch)
    views = list(batch["views"])
    plain = Contrastive.from_config({**model.get_config(), "diversity_weight": 0.0})
    plain.set_weights(model.get_weights())
    # The same noise: both quantisers start from the same seed state.
    plain.query_heads[2].seed_generator.state.assign(model.query_heads[2].seed_generator.state)
    _, _, _, probabilities = model._embed(model.encoder, model._features_of, model.query_heads,
                                          tf.concat(views, 0), True)
    model.query_heads[2].seed_generator.state.assign(plain.query_heads[2].seed_generator.state)
    with_term = model.compute_ssl_loss(views, training=True)["loss"]
    without = plain.compute_ssl_loss(views, training=True)["loss"]
    np.testing.assert_allclose(with_term - without, losses.codebook_diversity(probabilities[0]), rtol=1e-4)


def test_context_instance_pairs_are_deep_infomax():
    keras.utils.set_random_seed(0)
    model = Contrastive(checks.tiny_encoder(), pairs="context_instance", temperature=0.5, **SMALL)
    view = checks.random_views(6, num_views=1)[0]
    loss = model.compute_ssl_loss([view], training=False)["loss"]
    feature_map, pooled = model._features_of(view)
    g = tf.math.l2_normalize(model.query_heads[0](pooled), -1)
    local = model.local_projector(tf.reshape(feature_map, [-1, feature_map.shape[-1]]))
    local = tf.reshape(local, [6, -1, 16])
    expected = tf.reduce_mean(losses.context_instance_info_nce(g, local, 0.5))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    checks.check_fit_step(lambda: model, {"views": (view,)})


# ------------------------------------------------------------- the losses
@pytest.mark.parametrize("loss", ["nce", "margin", "triplet", "info_nce"])
def test_batch_negative_losses_match_numpy(loss):
    keras.utils.set_random_seed(0)
    model = Contrastive(checks.tiny_encoder(), loss=loss, temperature=0.5, margin=0.7, **SMALL)
    rng = np.random.default_rng(0)
    q, k = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in rng.normal(size=(2, 5, 16)).astype("float32"))
    got = model._pair_loss(tf.constant(q), tf.constant(k)).numpy()
    sim = q @ k.T
    expected = []
    for i in range(5):
        others = [j for j in range(5) if j != i]
        if loss == "info_nce":
            logits = sim[i] / 0.5
            expected.append(np.log(np.exp(logits).sum()) - logits[i])
        elif loss == "nce":
            neg = sim[i, others] / 0.5
            log_z = np.log(4) + np.log(np.exp(neg).mean())
            shift = np.log(4) - np.log(4)  # log k + log P_n, P_n = 1/4 over the 4 negatives
            pos = sim[i, i] / 0.5 - log_z
            expected.append(np.log1p(np.exp(-(pos - shift))) + np.log1p(np.exp(neg - log_z - shift)).sum())
        else:
            n = k[others[int(np.argmax(sim[i, others]))]]
            d_pos, d_neg = np.linalg.norm(q[i] - k[i]), np.linalg.norm(q[i] - n)
            if loss == "triplet":
                expected.append(max(0.0, d_pos - d_neg + 0.7))
            else:
                expected.append(0.5 * d_pos**2 + 0.5 * max(0.0, 0.7 - d_neg) ** 2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_xla_step_with_a_memory_bank_matches_the_plain_step():
    results = []
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = bank_model()
        model.compile(optimizer=checks.sgd(), jit_compile=jit)
        batches = [views_batch(index=True, seed=s) for s in range(2)]
        dataset = tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(lambda *p: np.stack(p), *batches))
        results.append((model.fit(dataset, verbose=0).history["loss"][0], model.bank.bank.numpy()))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-4)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pairs": "view"}, "Did you mean 'views'"),
        ({"loss": "infonce"}, "Did you mean 'info_nce'"),
        ({"key_encoder": 3}, "a keras.Model"),
        ({"heads": ("projection", "contextualisation")}, "contextualisation head first"),
        ({"heads": ("projection", "projection")}, "each head once"),
        ({"loss": "nt_xent", "key_encoder": "momentum"}, "loss='nt_xent'"),
        ({"negatives": "memory_bank"}, "A memory bank is both"),
        ({"key_encoder": "memory_bank", "negatives": "queue", "num_instances": 4}, "A memory bank is both"),
        ({"pairs": "context_instance", "key_encoder": "momentum"}, "Deep InfoMax"),
        ({"temperature": 0}, "Received: temperature=0"),
        ({"momentum": 1.5}, "Received: momentum=1.5"),
        ({"context_mode": "lstm"}, "Received: context_mode='lstm'"),
        ({"seed": 1.5}, "Received: seed=1.5"),
        ({"quee_size": 8}, "Did you mean 'queue_size'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Contrastive(checks.tiny_encoder(), **kwargs)


def test_config_round_trip_and_save_load_with_a_memory_bank(tmp_path):
    model = bank_model()
    fit(model, [views_batch(index=True)])
    clone = checks.check_config_round_trip(model)
    assert (clone.key_kind, clone.negatives, clone.loss_name) == ("memory_bank", "memory_bank", "nce")
    loaded = checks.check_save_load(model, checks.random_images(4), tmp_path)
    np.testing.assert_array_equal(loaded.bank.bank.numpy(), model.bank.bank.numpy())
