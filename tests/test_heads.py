import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcl import augment, heads


def test_shapes_and_layer_structure():
    head = heads.MLPHead(hidden_dims=(32, 16), output_dim=8)
    out = head(np.ones((4, 10), "float32"), training=True)
    assert out.shape == (4, 8)
    # Two hidden Dense+BN pairs without bias (BN's shift replaces it), linear output with bias.
    assert [d.units for d, _ in head.hidden] == [32, 16]
    assert all(not d.use_bias for d, _ in head.hidden) and head.out.use_bias
    assert head.out_norm is None


def test_output_bn_without_affine_has_no_scale_or_shift():
    head = heads.MLPHead(hidden_dims=(8,), output_dim=4, output_bn=True, output_bn_affine=False)
    head.build((None, 6))
    names = [w.path.split("/")[-1] for w in head.out_norm.weights]
    assert "gamma" not in names and "beta" not in names
    assert not head.out.use_bias
    # Training-mode output is standardised per feature.
    x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
    y = head(x, training=True).numpy()
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-2)


def test_linear_head_and_no_batch_norm():
    head = heads.MLPHead(hidden_dims=(), output_dim=3, batch_norm=False)
    x = np.random.default_rng(1).normal(size=(5, 4)).astype("float32")
    kernel_bias = head(x)  # builds
    expected = x @ head.out.kernel.numpy() + head.out.bias.numpy()
    np.testing.assert_allclose(kernel_bias, expected, rtol=1e-5)


def test_synchronized_flag_reaches_every_bn():
    for flag in (True, False):
        head = heads.ProjectionHead(hidden_dims=(8, 8), output_dim=4, output_bn=True, synchronized=flag)
        assert all(norm.synchronized == flag for _, norm in head.hidden)
        assert head.out_norm.synchronized == flag


def test_named_defaults():
    assert heads.ProjectionHead().get_config()["hidden_dims"] == [2048]
    assert heads.ProjectionHead().output_dim == 128
    assert heads.PredictionHead().get_config()["hidden_dims"] == [4096]
    assert heads.PredictionHead().output_dim == 256


def test_config_round_trip_through_json():
    head = heads.PredictionHead(hidden_dims=(16,), output_dim=4, output_bn=True, synchronized=False)
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(head)))
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is heads.PredictionHead
    assert clone.get_config() == head.get_config()


@pytest.mark.parametrize(
    "kwargs, match",
    [({"hidden_dims": (0,)}, "hidden_dims"), ({"output_dim": 0}, "output_dim"), ({"output_dim": -3}, "output_dim")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        heads.MLPHead(**kwargs)


def test_prototypes_normalize_rows_in_place_and_score():
    from kcl.heads import Prototypes

    layer = Prototypes(num_prototypes=6)
    layer.build((None, 4))
    layer.kernel.assign(np.random.default_rng(0).normal(size=(6, 4)).astype("float32") * 5)
    before = layer.kernel.numpy()
    layer.normalize()
    kernel = layer.kernel.numpy()
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(kernel, before / np.linalg.norm(before, axis=1, keepdims=True), rtol=1e-6)
    z = np.random.default_rng(1).normal(size=(3, 4)).astype("float32")
    np.testing.assert_allclose(layer(z).numpy(), z @ kernel.T, rtol=1e-5, atol=1e-6)
    assert layer.compute_output_shape((None, 4)) == (None, 6)
    assert Prototypes.from_config(layer.get_config()).num_prototypes == 6
    with pytest.raises(ValueError, match="num_prototypes=0"):
        Prototypes(0)


# ---------------------------------------------------------------------------
# QuantisationHead (wav2vec 2.0).


def _features(n=4, f=6, seed=0):
    return np.random.default_rng(seed).normal(size=(n, f)).astype("float32")


def _quantiser(seed=3, **kwargs):
    kwargs = {"num_codebooks": 2, "codebook_size": 5, "output_dim": 6, **kwargs}
    head = heads.QuantisationHead(seed=seed, **kwargs)
    head.build((None, 6))
    return head


def _assert_one_hot(codes):
    codes = np.asarray(codes)
    assert set(np.unique(codes)) <= {0.0, 1.0}
    np.testing.assert_array_equal(codes.sum(-1), 1.0)


def test_quantiser_codes_are_one_hot_and_inference_is_the_logits_argmax():
    head, x = _quantiser(), _features()
    train = head.quantise(x, training=True)
    assert train["quantised"].shape == (4, 6) and train["codes"].shape == (4, 2, 5)
    assert all(t.dtype == tf.float32 for t in train.values())
    _assert_one_hot(train["codes"])
    first = head.quantise(x)
    _assert_one_hot(first["codes"])
    np.testing.assert_array_equal(first["codes"].numpy(), head.quantise(x)["codes"].numpy())
    logits = (x @ head.logits.kernel.numpy() + head.logits.bias.numpy()).reshape(4, 2, 5)
    np.testing.assert_array_equal(first["codes"].numpy().argmax(-1), logits.argmax(-1))
    # Probabilities: softmax of the logits, no noise, no temperature.
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(first["probabilities"].numpy(), softmax, rtol=1e-5)
    np.testing.assert_allclose(train["probabilities"].numpy(), softmax, rtol=1e-5)
    # Inference draws no noise: the stream does not move.
    state = head.seed_generator.state.numpy().copy()
    head(x, training=False)
    np.testing.assert_array_equal(head.seed_generator.state.numpy(), state)


def test_quantised_is_the_chosen_entries_concatenated_through_the_output_dense():
    head = _quantiser(entry_dim=3, output_dim=4)
    x = _features()
    for training in (False, True):
        out = head.quantise(x, training=training)
        chosen = out["codes"].numpy().argmax(-1)  # [b, G]
        book = head.codebooks.numpy()  # [G, V, d]
        rows = np.concatenate([book[g, chosen[:, g]] for g in range(2)], axis=1)  # [b, 2 d]
        expected = rows @ head.out.kernel.numpy() + head.out.bias.numpy()
        np.testing.assert_allclose(out["quantised"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert head.compute_output_shape((None, 6)) == (None, 4)


def test_quantiser_straight_through_gradient_is_the_soft_gradient():
    tau, g, v = 0.7, 2, 3
    head = heads.QuantisationHead(g, v, output_dim=4, temperature=tau, seed=11)
    head.build((None, g * v))
    # Identity logits layer: the logits are the inputs, so d/dx = d/dlogits.
    head.logits.kernel.assign(np.eye(g * v, dtype="float32"))
    head.logits.bias.assign(np.zeros(g * v, "float32"))
    x = tf.constant(_features(4, g * v, seed=1))
    w = tf.constant(_features(4, g * v, seed=2).reshape(4, g, v))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        out = head.quantise(x, training=True)
        weighted = tf.reduce_sum(w * out["codes"])
        loss = tf.reduce_sum(tf.square(out["quantised"]))
    # The noise of the first draw of a fresh generator with the same seed.
    u = augment.per_image_uniforms(keras.random.SeedGenerator(11), 4, g * v).numpy()
    noise = -np.log(-np.log(np.clip(u, 1e-6, 1 - 1e-6))).reshape(4, g, v)
    z = (x.numpy().reshape(4, g, v) + noise) / tau
    soft = np.exp(z - z.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    np.testing.assert_array_equal(out["codes"].numpy(), np.eye(v)[soft.argmax(-1)])
    # Softmax Jacobian: d sum_v w_v s_v / d l_u = s_u (w_u - sum_v w_v s_v) / tau.
    w = w.numpy()
    expected = soft * (w - (w * soft).sum(-1, keepdims=True)) / tau
    np.testing.assert_allclose(tape.gradient(weighted, x).numpy(), expected.reshape(4, -1), rtol=1e-4, atol=1e-6)
    # A loss of the output trains the logits layer (and the codebooks).
    kernel_grad, book_grad = tape.gradient(loss, [head.logits.kernel, head.codebooks])
    assert np.all(np.isfinite(kernel_grad.numpy())) and np.abs(kernel_grad.numpy()).max() > 0
    assert np.abs(book_grad.numpy()).max() > 0
    # Inference codes carry no gradient to the logits.
    with tf.GradientTape() as tape:
        tape.watch(x)
        codes = head.quantise(x)["codes"]
    assert tape.gradient(tf.reduce_sum(w * codes), x) is None


def test_quantiser_computes_in_float32_under_a_mixed_policy():
    x = _features()
    mixed = heads.QuantisationHead(2, 5, output_dim=6, seed=3, dtype="mixed_float16")
    plain = _quantiser(seed=3)
    mixed.build((None, 6))
    mixed.set_weights(plain.get_weights())
    out = mixed(x.astype("float16"), training=True)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), plain(x.astype("float16"), training=True).numpy(), rtol=1e-6)
    inputs = keras.Input((6,))
    assert heads.QuantisationHead(2, 5, 6, dtype="mixed_float16")(inputs).dtype == "float32"


def test_quantiser_same_seed_same_codes_and_the_stream_advances():
    x = _features(8)
    a, b, c = _quantiser(seed=5), _quantiser(seed=5), _quantiser(seed=6)
    b.set_weights(a.get_weights())
    c.set_weights(a.get_weights())
    first = a.quantise(x, training=True)["codes"].numpy()
    np.testing.assert_array_equal(first, b.quantise(x, training=True)["codes"].numpy())
    assert not np.array_equal(first, c.quantise(x, training=True)["codes"].numpy())
    assert not np.array_equal(first, a.quantise(x, training=True)["codes"].numpy())


def test_quantiser_seed_state_round_trips(tmp_path):
    x = _features(8)
    head = _quantiser(seed=5)
    head(x, training=True)  # move the stream off its start
    store = {}
    head.save_own_variables(store)
    assert "seed_state" in store
    # The store holds the variables themselves (as Keras' does): load first.
    other = _quantiser(seed=9)
    other.load_own_variables(store)
    expected = head.quantise(x, training=True)["codes"].numpy()
    np.testing.assert_array_equal(other.codebooks.numpy(), head.codebooks.numpy())
    other.logits.set_weights(head.logits.get_weights())
    other.out.set_weights(head.out.get_weights())
    np.testing.assert_array_equal(other.quantise(x, training=True)["codes"].numpy(), expected)
    # Through a .keras file: weights and the seed state.
    inputs = keras.Input((6,))
    model = keras.Model(inputs, _quantiser(seed=2, name="q")(inputs))
    model.layers[-1](x, training=True)
    path = str(tmp_path / "q.keras")
    model.save(path)
    want = model.layers[-1].quantise(x, training=True)["codes"].numpy()
    restored = keras.saving.load_model(path).get_layer("q")
    assert isinstance(restored, heads.QuantisationHead)
    np.testing.assert_array_equal(restored.quantise(x, training=True)["codes"].numpy(), want)


def test_quantiser_distributed_codes_equal_one_device_codes(two_cpus):
    strategy = two_cpus
    x = _features(4)
    single = _quantiser(seed=7)
    with strategy.scope():
        replicated = _quantiser(seed=7)
    replicated.set_weights(single.get_weights())
    one_device = tf.function(lambda t: single.quantise(t, training=True))
    local = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(x)[2 * ctx.replica_id_in_sync_group :][:2]
    )
    step = tf.function(lambda t: strategy.run(lambda r: replicated.quantise(r, training=True), (t,)))
    for _ in range(2):  # the seed state advances alike
        expected = one_device(x)
        result = step(local)
        parts = {key: strategy.experimental_local_results(result[key]) for key in result}
        assert [p.shape[0] for p in parts["codes"]] == [2, 2]
        codes = np.concatenate([p.numpy() for p in parts["codes"]])
        _assert_one_hot(codes)
        np.testing.assert_array_equal(codes, expected["codes"].numpy())
        quantised = np.concatenate([p.numpy() for p in parts["quantised"]])
        np.testing.assert_allclose(quantised, expected["quantised"].numpy(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# ContextualisationHead (CPC's g_ar, wav2vec 2.0's context network).


@pytest.mark.parametrize("mode", ["gru", "attention"])
@pytest.mark.parametrize("shape", [(2, 6, 5), (2, 2, 3, 5)])
def test_context_shapes(mode, shape):
    head = heads.ContextualisationHead(units=8, mode=mode, num_heads=2)
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    assert head(x).shape == (2, 8)
    assert head.compute_output_shape((None,) + shape[1:]) == (None, 8)


def test_context_gru_is_a_gru_over_the_raster_sequence():
    head = heads.ContextualisationHead(units=4, mode="gru")
    x = np.random.default_rng(1).normal(size=(2, 2, 3, 5)).astype("float32")
    out = head(x).numpy()
    reference = keras.layers.GRU(4)
    reference.build((None, 6, 5))
    reference.set_weights(head.gru.get_weights())
    np.testing.assert_allclose(out, reference(x.reshape(2, 6, 5)).numpy(), rtol=1e-5, atol=1e-6)
    # The map [b, h, w, F] is read row by row: the same as its flattened sequence.
    np.testing.assert_allclose(out, head(x.reshape(2, 6, 5)).numpy(), rtol=1e-6)


def test_context_attention_sees_the_order_only_through_the_position_embedding():
    head = heads.ContextualisationHead(units=8, mode="attention", num_heads=2)
    x = np.random.default_rng(2).normal(size=(2, 6, 5)).astype("float32")
    permuted = x[:, [3, 0, 5, 1, 4, 2]]
    head(x)
    head.position_embedding.assign(np.random.default_rng(3).normal(size=(6, 8)).astype("float32"))
    assert not np.allclose(head(x).numpy(), head(permuted).numpy(), atol=1e-4)
    head.position_embedding.assign(np.zeros((6, 8), "float32"))
    np.testing.assert_allclose(head(x).numpy(), head(permuted).numpy(), rtol=1e-5, atol=1e-5)


def test_context_attention_needs_a_static_length():
    head = heads.ContextualisationHead(units=8, mode="attention", num_heads=2)
    with pytest.raises(ValueError, match="static number of positions"):
        head.build((None, None, 5))


def test_new_heads_config_round_trip():
    for head in (
        heads.QuantisationHead(3, 7, output_dim=10, temperature=0.5, entry_dim=2, seed=4),
        heads.ContextualisationHead(units=12, mode="attention", num_heads=3),
        heads.ContextualisationHead(units=12),
    ):
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(head)))
        clone = keras.saving.deserialize_keras_object(config)
        assert type(clone) is type(head)
        assert clone.get_config() == head.get_config()
    assert heads.QuantisationHead(output_dim=9, num_codebooks=2).entry_dim == 4
    assert heads.QuantisationHead(output_dim=1, num_codebooks=2).entry_dim == 1


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: heads.QuantisationHead(num_codebooks=0), "num_codebooks=0"),
        (lambda: heads.QuantisationHead(codebook_size=2.5), "codebook_size=2.5"),
        (lambda: heads.QuantisationHead(output_dim=-1), "output_dim=-1"),
        (lambda: heads.QuantisationHead(entry_dim=0), "entry_dim=0"),
        (lambda: heads.QuantisationHead(temperature=0.0), "temperature=0.0"),
        (lambda: heads.QuantisationHead(temperature=float("inf")), "temperature=inf"),
        (lambda: heads.QuantisationHead(seed=1.5), "seed=1.5"),
        (lambda: heads.QuantisationHead().build((None, 3, 4)), "input_shape=\\(None, 3, 4\\)"),
        (lambda: heads.ContextualisationHead(units=0), "units=0"),
        (lambda: heads.ContextualisationHead(mode="lstm"), "mode='lstm'"),
        (lambda: heads.ContextualisationHead(num_heads=0), "num_heads=0"),
        (lambda: heads.ContextualisationHead(8, "attention", num_heads=3), "num_heads=3"),
        (lambda: heads.ContextualisationHead().build((None, 4)), "input_shape=\\(None, 4\\)"),
    ],
)
def test_new_heads_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()
