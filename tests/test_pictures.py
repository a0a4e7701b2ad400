"""Tests of kcl.pictures: PCA and exact t-SNE (perplexity calibration, cluster
separation, determinism, limits), nearest neighbours against brute force,
class-balanced subsampling, Grad-CAM saliency on encoders whose output is
known to depend on one region, the overlap statistic, the supervised
baseline, and that every plot writes a PNG of exactly figure size x dpi."""

import keras
import numpy as np
import pytest

import kcl
from kcl import pictures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    """(width, height) in pixels, read from the PNG's IHDR chunk."""
    with open(path, "rb") as file:
        data = file.read(24)
    assert data[:8] == PNG_SIGNATURE
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def assert_png(path, width, height):
    """A PNG of exactly `width` x `height` pixels holding more than one colour."""
    import matplotlib.image

    assert png_size(path) == (width, height)
    pixels = matplotlib.image.imread(str(path))
    assert pixels.shape[:2] == (height, width)
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 1


def gaussian_clusters(classes=5, per_class=40, dims=64, seed=0):
    rng = np.random.default_rng(seed)
    centres = 6.0 * rng.normal(size=(classes, dims))
    features = np.concatenate([c + rng.normal(size=(per_class, dims)) for c in centres])
    return features.astype("float32"), np.repeat(np.arange(classes), per_class)


def knn_accuracy_2d(points, labels, k=5):
    """Leave-one-out majority-vote kNN accuracy in the embedding."""
    d = np.sum((points[:, None] - points[None]) ** 2, axis=-1)
    np.fill_diagonal(d, np.inf)
    neighbours = np.argsort(d, axis=1)[:, :k]
    votes = np.array([np.bincount(labels[row]).argmax() for row in neighbours])
    return np.mean(votes == labels)


def images_uint8(n, size=16, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, channels)).astype("uint8")


# -- PCA and t-SNE -----------------------------------------------------------


def test_pca_orders_variance_and_matches_the_covariance_eigenvectors():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 6)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    projected = pictures.pca(x, dims=3)
    assert projected.shape == (100, 3) and projected.dtype == np.float32
    variances = projected.var(axis=0)
    assert np.all(np.diff(variances) < 0)
    eigenvalues = np.linalg.eigvalsh(np.cov(x.T, bias=True))[::-1]
    np.testing.assert_allclose(variances, eigenvalues[:3], rtol=1e-4)
    # Components are uncorrelated, and the sign convention makes PCA repeatable.
    covariance = np.cov(projected.T)
    np.testing.assert_allclose(covariance - np.diag(np.diag(covariance)), 0, atol=1e-3)
    np.testing.assert_array_equal(projected, pictures.pca(x, dims=3))
    with pytest.raises(ValueError, match="Received: dims=7"):
        pictures.pca(x, dims=7)


def test_perplexity_is_matched_by_the_binary_search():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)) * rng.uniform(0.1, 10.0, size=(60, 1))
    p = pictures._conditional_probabilities(pictures._squared_distances(x), perplexity=10.0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-9)
    assert np.all(np.diag(p) == 0)
    entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)
    np.testing.assert_allclose(np.exp(entropy), 10.0, rtol=1e-3)
    joint = pictures._joint_probabilities(pictures._squared_distances(x), perplexity=10.0)
    np.testing.assert_allclose(joint, joint.T)
    np.testing.assert_allclose(joint.sum(), 1.0, rtol=1e-6)


def test_tsne_separates_gaussian_clusters_and_is_deterministic(capsys):
    features, labels = gaussian_clusters()
    embedding = pictures.tsne(features, seed=0, verbose=1)
    assert embedding.shape == (200, 2) and embedding.dtype == np.float32
    assert knn_accuracy_2d(embedding, labels) > 0.95
    assert "iteration 500/500: KL(P||Q)" in capsys.readouterr().out
    np.testing.assert_array_equal(embedding, pictures.tsne(features, seed=0))
    assert not np.allclose(embedding, pictures.tsne(features, seed=1))


def test_tsne_refuses_too_many_points_and_bad_arguments():
    features, _ = gaussian_clusters(per_class=10)
    with pytest.raises(ValueError, match="subsample.*Received: N=50, max_points=40"):
        pictures.tsne(features, max_points=40)
    with pytest.raises(ValueError, match="Received: perplexity=50"):
        pictures.tsne(features, perplexity=50)
    with pytest.raises(ValueError, match="non-finite"):
        pictures.tsne(np.full((10, 3), np.nan))
    with pytest.raises(ValueError, match="Received: features.shape=\\(10,\\)"):
        pictures.tsne(np.zeros(10))


# -- embedding scatter -------------------------------------------------------


def test_balanced_subsample_is_even_over_classes_and_seeded():
    labels = np.repeat([0, 1, 2], [100, 10, 50])
    chosen = pictures._balanced_subsample(labels, 60, seed=0)
    assert len(chosen) == 60 and len(np.unique(chosen)) == 60
    np.testing.assert_array_equal(np.bincount(labels[chosen]), [25, 10, 25])
    np.testing.assert_array_equal(chosen, pictures._balanced_subsample(labels, 60, seed=0))
    assert not np.array_equal(chosen, pictures._balanced_subsample(labels, 60, seed=1))
    np.testing.assert_array_equal(pictures._balanced_subsample(labels, 500, seed=0), np.arange(160))


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_embedding_scatter_writes_a_png_of_size_times_dpi(tmp_path, method):
    features, labels = gaussian_clusters(classes=3, per_class=30, dims=16)
    path = tmp_path / f"{method}.png"
    written = pictures.embedding_scatter(
        features,
        labels,
        path,
        method=method,
        class_names=["a", "b", "c"],
        max_points=60,
        size=(4, 3),
        dpi=80,
    )
    assert written == path
    assert_png(path, 320, 240)


def test_embedding_scatter_bad_arguments(tmp_path):
    features, labels = gaussian_clusters(classes=2, per_class=10, dims=4)
    with pytest.raises(ValueError, match="Received: method='umap'"):
        pictures.embedding_scatter(features, labels, tmp_path / "a.png", method="umap")
    with pytest.raises(ValueError, match="One label per feature"):
        pictures.embedding_scatter(features, labels[:5], tmp_path / "a.png")


# -- retrieval ---------------------------------------------------------------


def brute_force_neighbours(query, gallery, k, exclude_self=False):
    indices, similarities = [], []
    for i, q in enumerate(query):
        scored = []
        for j, g in enumerate(gallery):
            if exclude_self and i == j:
                continue
            cosine = float(q @ g / (np.linalg.norm(q) * np.linalg.norm(g)))
            scored.append((-cosine, j))
        scored.sort()
        indices.append([j for _, j in scored[:k]])
        similarities.append([-s for s, _ in scored[:k]])
    return np.array(indices), np.array(similarities)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_nearest_neighbours_match_brute_force(exclude_self):
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(40, 8))
    query = gallery if exclude_self else rng.normal(size=(13, 8))
    indices, similarities = pictures.nearest_neighbours(
        query, gallery, k=5, exclude_self=exclude_self, batch_size=4
    )
    expected_indices, expected_similarities = brute_force_neighbours(
        query, gallery, 5, exclude_self
    )
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(similarities, expected_similarities, rtol=1e-5)
    assert indices.shape == (len(query), 5) and similarities.dtype == np.float32
    if exclude_self:
        assert not np.any(indices == np.arange(len(query))[:, None])
    else:
        # Without exclusion a gallery item is its own nearest neighbour.
        self_indices, self_similarities = pictures.nearest_neighbours(gallery, gallery, k=1)
        np.testing.assert_array_equal(self_indices[:, 0], np.arange(40))
        np.testing.assert_allclose(self_similarities, 1.0, rtol=1e-6)


def test_nearest_neighbours_bad_arguments():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match="Received: k=4"):
        pictures.nearest_neighbours(x, x, k=4, exclude_self=True)
    with pytest.raises(ValueError, match="same set"):
        pictures.nearest_neighbours(x[:2], x, k=1, exclude_self=True)
    with pytest.raises(ValueError, match="same dimension"):
        pictures.nearest_neighbours(x, np.ones((4, 2)), k=1)


@pytest.mark.parametrize("labelled, channels", [(True, 1), (False, 3)])
def test_retrieval_grid_writes_a_png_of_the_documented_size(tmp_path, labelled, channels):
    images = images_uint8(20, channels=channels)
    features = np.random.default_rng(1).normal(size=(20, 8))
    labels = np.arange(20) % 3 if labelled else None
    path = tmp_path / "retrieval.png"
    written = pictures.retrieval_grid(
        images,
        images,
        features,
        features,
        path,
        k=4,
        query_labels=labels,
        gallery_labels=labels,
        num_queries=3,
        exclude_self=True,
        dpi=100,
    )
    assert written == path
    # 1.25 * (k + 1) by 1.5 * rows + 0.5 inches.
    assert_png(path, 625, 500)


def test_retrieval_grid_bad_arguments(tmp_path):
    images = images_uint8(6)
    features = np.ones((6, 4))
    with pytest.raises(ValueError, match="both"):
        pictures.retrieval_grid(
            images, images, features, features, tmp_path / "a.png", k=2, query_labels=np.zeros(6)
        )
    with pytest.raises(ValueError, match="Received: query_images.dtype=float32"):
        pictures.retrieval_grid(
            images.astype("float32"), images, features, features, tmp_path / "a.png", k=2
        )
    with pytest.raises(ValueError, match="One query feature per query image"):
        pictures.retrieval_grid(images, images, features[:3], features, tmp_path / "a.png", k=2)


# -- saliency ----------------------------------------------------------------


def region_encoder(mask, name="region"):
    """16x16 grey -> conv feature map -> times a fixed spatial mask -> mean pool.

    The output depends only on the pixels the mask keeps (up to the conv's
    3x3 reach), so Grad-CAM at the masked map must light up there only.
    """
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.Lambda(lambda t: t * mask[None, :, :, None], name="mask")(x)
    outputs = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, outputs, name=name)


def quadrant_mask():
    mask = np.zeros((16, 16), "float32")
    mask[:8, :8] = 1.0
    return mask


def test_saliency_concentrates_where_the_encoder_looks():
    keras.utils.set_random_seed(0)
    mask = quadrant_mask()
    encoder = region_encoder(mask)
    images = images_uint8(6)
    maps = pictures.saliency_maps(encoder, images)
    assert maps.shape == (6, 16, 16) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0)
    inside = maps[:, mask > 0].mean(axis=1)
    outside = maps[:, mask == 0].mean(axis=1)
    assert np.all(inside > 0.1) and np.all(outside == 0.0)
    # Batching does not change the maps; float images in [0, 255] equal uint8.
    np.testing.assert_allclose(
        pictures.saliency_maps(encoder, images, batch_size=4), maps, atol=1e-6
    )
    np.testing.assert_allclose(
        pictures.saliency_maps(encoder, images.astype("float32")), maps, atol=1e-6
    )


def test_saliency_of_a_downsampled_feature_map_and_a_target_callable():
    # A stride-2 feature map (8x8) is upsampled to 16x16; a score of one
    # feature, computed only on the right half, must still light the right half.
    keras.utils.set_random_seed(0)
    mask = np.zeros((8, 8), "float32")
    mask[:, 4:] = 1.0
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.Lambda(lambda t: t * mask[None, :, :, None], name="mask")(x)
    encoder = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    images = images_uint8(4, seed=1)
    maps = pictures.saliency_maps(encoder, images, layer="mask", target=lambda f: f[:, 0] + f[:, 1])
    assert maps.shape == (4, 16, 16)
    assert np.all(maps[:, :, 9:].mean(axis=(1, 2)) > 10 * maps[:, :, :7].mean(axis=(1, 2)) + 1e-6)


def test_an_all_zero_map_stays_zero():
    encoder = region_encoder(np.zeros((16, 16), "float32"))
    maps = pictures.saliency_maps(encoder, images_uint8(3))
    np.testing.assert_array_equal(maps, 0.0)


def test_saliency_on_a_kcl_backbone():
    encoder = kcl.backbones.get("resnet18_cifar", input_shape=(16, 16, 1), width=0.25)
    maps = pictures.saliency_maps(encoder, images_uint8(2))
    assert maps.shape == (2, 16, 16)
    assert np.all(np.isfinite(maps)) and maps.min() >= 0.0 and maps.max() <= 1.0


def test_saliency_errors_name_the_candidate_layers():
    inputs = keras.Input((16, 16, 1))
    flat = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match="4-d output"):
        pictures.saliency_maps(flat, images_uint8(2))
    encoder = region_encoder(quadrant_mask())
    with pytest.raises(ValueError, match=r"candidates: \['conv', 'mask'\]. Received: layer='nope'"):
        pictures.saliency_maps(encoder, images_uint8(2), layer="nope")
    with pytest.raises(ValueError, match="Received: target=3"):
        pictures.saliency_maps(encoder, images_uint8(2), target=3)


def test_saliency_overlap_is_one_with_itself_and_zero_when_disjoint():
    rng = np.random.default_rng(0)
    maps = rng.random((5, 10, 10)).astype("float32")
    itself = pictures.saliency_overlap(maps, maps, top=0.2)
    np.testing.assert_allclose(itself["iou"], 1.0)
    assert itself["mean"] == pytest.approx(1.0)
    left = np.zeros((5, 10, 10), "float32")
    left[:, :, :2] = 1.0
    right = left[:, :, ::-1]
    disjoint = pictures.saliency_overlap(left, right, top=0.2)
    np.testing.assert_array_equal(disjoint["iou"], 0.0)
    # Half the top pixels shared: IoU = 10 / (20 + 20 - 10).
    shifted = np.zeros_like(left)
    shifted[:, :, 1:3] = 1.0
    assert pictures.saliency_overlap(left, shifted, top=0.2)["mean"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="Received: top=0"):
        pictures.saliency_overlap(maps, maps, top=0)
    with pytest.raises(ValueError, match="same shape"):
        pictures.saliency_overlap(maps, maps[:, :5])


def test_supervised_baseline_trains_a_clone_and_targets_the_predicted_logit():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = np.arange(64) % 2
    images = rng.integers(0, 60, (64, 16, 16, 1))
    # Class 1 has a bright left half.
    images[labels == 1, :, :8] += 180
    images = images.astype("uint8")
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    encoder = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="tiny")
    before = [w.copy() for w in encoder.get_weights()]
    supervised, classifier, target = pictures.supervised_baseline(
        encoder, (images, labels), epochs=2, batch_size=16, learning_rate=1e-2
    )
    for old, new in zip(before, encoder.get_weights()):
        np.testing.assert_array_equal(old, new)
    assert supervised is not encoder
    logits = classifier.predict(images / 255.0, verbose=0)
    assert logits.shape == (64, 2)
    features = supervised.predict(images / 255.0, verbose=0)
    np.testing.assert_allclose(
        np.asarray(target(features)), logits.max(axis=1), rtol=1e-4, atol=1e-5
    )
    maps = pictures.saliency_maps(supervised, images[:4], target=target)
    assert maps.shape == (4, 16, 16) and maps.min() >= 0.0 and maps.max() <= 1.0
    with pytest.raises(ValueError, match="One label per image"):
        pictures.supervised_baseline(encoder, (images, labels[:3]))


def test_saliency_figure_writes_a_png_of_the_documented_size(tmp_path):
    images = images_uint8(5, channels=3)
    maps = [np.random.default_rng(i).random((5, 16, 16)).astype("float32") for i in range(2)]
    path = tmp_path / "saliency.png"
    assert pictures.saliency_figure(images, maps, path, num_images=4, dpi=50) == path
    # 1.5 * columns by 1.5 * rows inches: 3 columns, 4 rows.
    assert_png(path, 225, 300)
    single = pictures.saliency_figure(
        images[..., :1], maps[0], tmp_path / "one.png", titles=("image", "ssl"), num_images=8
    )
    assert_png(single, 300, 750)
    with pytest.raises(ValueError, match="titles"):
        pictures.saliency_figure(images, maps, path, titles=("image",))
    with pytest.raises(ValueError, match=r"Received: maps\[1\].shape=\(5, 8, 8\)"):
        pictures.saliency_figure(images, [maps[0], maps[1][:, :8, :8]], path)
