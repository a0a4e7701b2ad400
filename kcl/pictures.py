"""Pictures of learned representations: embeddings, retrievals, saliency.

Three views of what an encoder has learned, each a pure function that does
the numbers and a plot function that writes a PNG and returns its path:

- `pca(features)` and `tsne(features)`: 2-d embeddings of feature vectors
  (exact t-SNE in NumPy, for up to a few thousand points), and
  `embedding_scatter(features, labels, path)`: their scatter plot coloured by
  class;
- `nearest_neighbours(query, gallery, k)`: top-k cosine neighbours, and
  `retrieval_grid(...)`: one row per query image with its nearest gallery
  images, framed green (same label) or red (other label), with precision@k;
- `saliency_maps(encoder, images)`: Grad-CAM maps of a self-supervised
  encoder (the gradient of its feature norm, there being no class) or of any
  scalar score of its features; `supervised_baseline(encoder, train)`: the
  same architecture trained with labels, as the reference;
  `saliency_overlap(a, b)`: the IoU of the most salient pixels of two sets of
  maps (PIC, Cao et al. 2020, compares self-supervised and supervised maps
  this way); `saliency_figure(images, maps, path)`: the maps over the images.

Every plot is drawn with matplotlib's Agg backend (imported on first use,
`pip install 'kcl[plots]'`), saved without cropping, so the PNG holds exactly
`figure size x dpi` pixels; each function's docstring gives its figure size.
Images are uint8 `[N, H, W, C]` with C = 1 or 3.
"""

import math

import keras
import numpy as np

from kcl import backbones
from kcl.checks import check_images, check_positive_int
from kcl.plotting import pyplot

# ---------------------------------------------------------------------------
# 2-d embeddings: PCA and exact t-SNE.
# ---------------------------------------------------------------------------


def _check_features(features, name="features"):
    """`features` as a finite float64 `[N, D]` array, or `ValueError`."""
    array = np.asarray(features)
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(
            f"`{name}` must be a non-empty 2-d array [N, D]. Received: {name}.shape={array.shape}"
        )
    array = array.astype("float64")
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` contain NaN or Inf. Received: {name} with non-finite values")
    return array


def pca(features, dims=2):
    """Projects features onto their `dims` principal components.

    Features are centred and decomposed by SVD; the sign of each component
    is fixed (its largest loading positive, as scikit-learn's `svd_flip`), so
    the result does not depend on the LAPACK build.

    Args:
        features: `[N, D]` array.
        dims: number of components, at most `min(N, D)`. Defaults to `2`.

    Returns:
        `[N, dims]` float32 array, columns in order of decreasing variance.

    Example:

    >>> xy = kcl.pictures.pca(kcl.evaluation.embed(encoder, x_test), dims=2)
    """
    x = _check_features(features)
    if not isinstance(dims, (int, np.integer)) or not 1 <= dims <= min(x.shape):
        raise ValueError(
            f"`dims` must be an integer in [1, min(N, D)] = [1, {min(x.shape)}]. "
            f"Received: dims={dims}"
        )
    x = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    # Sign convention: the largest-magnitude entry of each component positive.
    signs = np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])
    signs[signs == 0] = 1.0
    return ((u[:, :dims] * s[:dims]) * signs[:dims]).astype("float32")


def _squared_distances(x):
    """`[N, N]` squared Euclidean distances, clipped at 0 against round-off."""
    sq = np.sum(x * x, axis=1)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)


def _conditional_probabilities(distances, perplexity, tol=1e-5, steps=100):
    """Rows p_{j|i} `[N, N]` of the t-SNE conditionals from squared distances.

    For each point i a Gaussian precision beta_i is found by bisection so
    that p_{j|i} ∝ exp(-beta_i d_ij) (p_{i|i} = 0) has entropy
    log(perplexity) in nats; all points are searched at once.
    """
    n = len(distances)
    d = distances.copy()
    np.fill_diagonal(d, np.inf)
    # Shifting a row by its smallest distance leaves p_{j|i} and the entropy
    # unchanged and keeps exp() from underflowing for far-apart points.
    d -= d.min(axis=1, keepdims=True)
    np.fill_diagonal(d, 0.0)
    target = np.log(perplexity)
    beta = np.ones(n)
    low = np.full(n, -np.inf)
    high = np.full(n, np.inf)
    for _ in range(steps):
        p = np.exp(-d * beta[:, None])
        np.fill_diagonal(p, 0.0)
        total = p.sum(axis=1)
        # H_i = log sum_j exp(-beta d_ij) + beta * E_p[d_i.]
        entropy = np.log(total) + beta * np.sum(d * p, axis=1) / total
        error = entropy - target
        if np.all(np.abs(error) < tol):
            break
        # Too flat (entropy too high): raise the precision, else lower it.
        flat = error > 0
        low = np.where(flat, beta, low)
        high = np.where(flat, high, beta)
        raised = np.where(np.isinf(high), beta * 2.0, (beta + high) / 2.0)
        lowered = np.where(np.isinf(low), beta / 2.0, (beta + low) / 2.0)
        beta = np.where(flat, raised, lowered)
    p = np.exp(-d * beta[:, None])
    np.fill_diagonal(p, 0.0)
    return p / p.sum(axis=1, keepdims=True)


def _joint_probabilities(distances, perplexity):
    """Symmetric affinities P = (p_{j|i} + p_{i|j}) / 2N `[N, N]`, as in the paper."""
    p = _conditional_probabilities(distances, perplexity)
    return np.maximum((p + p.T) / (2.0 * len(p)), 1e-12)


def tsne(
    features,
    perplexity=30.0,
    iterations=500,
    seed=0,
    pca_dims=50,
    verbose=0,
    max_points=5000,
):
    """Exact t-SNE of feature vectors to 2-d (van der Maaten & Hinton 2008).

    The features are first reduced to `pca_dims` principal components (as
    the reference implementation does), then each point's Gaussian
    precision is found by bisection to match `perplexity`, and the 2-d
    Student-t embedding is fitted by gradient descent on KL(P || Q) with
    the reference optimiser: early exaggeration 12 for the first 250
    iterations, momentum 0.5 then 0.8, per-coordinate gains (+0.2 when the
    gradient changes sign against the last step, x0.8 otherwise, floor
    0.01) and the learning rate max(N / 12 / 4, 50) (the "auto" rule of
    Belkina et al. 2019, scikit-learn's default). The start is Gaussian with
    standard deviation 1e-4, drawn from `seed`.

    The computation is exact, O(N^2) in time and memory per iteration: it
    is meant for up to a few thousand points (2,000 points take about
    half a minute on one core). Subsample larger sets (`embedding_scatter` does it
    class-balanced).

    Args:
        features: `[N, D]` array.
        perplexity: effective number of neighbours, below N. Defaults to
            `30.0`.
        iterations: gradient steps in all, including the 250 exaggerated
            ones. Defaults to `500`.
        seed: seed of the initial embedding. Defaults to `0`.
        pca_dims: principal components kept before t-SNE; `None` keeps the
            features as they are. Defaults to `50`.
        verbose: `1` prints KL(P || Q) every 50 iterations. Defaults to `0`.
        max_points: largest N accepted. Defaults to `5000`.

    Returns:
        `[N, 2]` float32 embedding, centred.

    Example:

    >>> features = kcl.evaluation.embed(encoder, x_test[:2000])
    >>> xy = kcl.pictures.tsne(features, perplexity=30)

    References:
        - van der Maaten & Hinton 2008, https://jmlr.org/papers/v9/vandermaaten08a.html
        - Belkina et al. 2019, https://doi.org/10.1038/s41467-019-13055-y
    """
    x = _check_features(features)
    n = len(x)
    if n > max_points:
        raise ValueError(
            f"Exact t-SNE is O(N^2) and meant for up to a few thousand points; "
            f"subsample the features (e.g. class-balanced, as embedding_scatter does) "
            f"or raise `max_points`. Received: N={n}, max_points={max_points}"
        )
    if not 0 < perplexity < n:
        raise ValueError(
            f"`perplexity` must be positive and below the number of points ({n}). "
            f"Received: perplexity={perplexity}"
        )
    iterations = check_positive_int("iterations", iterations)
    if pca_dims is not None:
        if not isinstance(pca_dims, (int, np.integer)) or pca_dims < 1:
            raise ValueError(
                f"`pca_dims` must be a positive integer or None. Received: pca_dims={pca_dims}"
            )
        if pca_dims < min(x.shape):
            x = pca(x, pca_dims).astype("float64")

    p = _joint_probabilities(_squared_distances(x), perplexity)
    exaggeration, exaggerated_steps = 12.0, 250
    learning_rate = max(n / exaggeration / 4.0, 50.0)
    rng = np.random.default_rng(seed)
    y = 1e-4 * rng.standard_normal((n, 2))
    update = np.zeros_like(y)
    gains = np.ones_like(y)
    p_exaggerated = p * exaggeration
    # Two [N, N] buffers reused every step, and no BLAS calls on the skinny
    # [N, 2] operands: fresh allocations and BLAS threading cost more than the
    # arithmetic for a thousand points.
    num = np.empty((n, n))
    w = np.empty((n, n))
    for step in range(iterations):
        early = step < exaggerated_steps
        p_step = p_exaggerated if early else p
        momentum = 0.5 if early else 0.8
        # Student-t kernel num_ij = 1 / (1 + |y_i - y_j|^2), Q = num / sum(num).
        np.subtract.outer(y[:, 0], y[:, 0], out=num)
        num *= num
        np.subtract.outer(y[:, 1], y[:, 1], out=w)
        w *= w
        num += w
        num += 1.0
        np.reciprocal(num, out=num)
        np.fill_diagonal(num, 0.0)
        total = num.sum()
        # dC/dy_i = 4 sum_j (p_ij - q_ij) num_ij (y_i - y_j); with
        # W = (P - Q) * num that is 4 (rowsum(W) y_i - (W y)_i), shape [N, 2].
        np.multiply(num, -1.0 / total, out=w)
        w += p_step
        w *= num
        w_y = np.stack([np.einsum("ij,j->i", w, y[:, c]) for c in range(2)], axis=1)
        gradient = 4.0 * (w.sum(axis=1, keepdims=True) * y - w_y)
        # Gains grow where the gradient opposes the last update (it keeps
        # pointing the same way as the descent), and shrink otherwise.
        opposed = (gradient > 0) != (update > 0)
        gains = np.maximum(np.where(opposed, gains + 0.2, gains * 0.8), 0.01)
        update = momentum * update - learning_rate * gains * gradient
        y = y + update
        y -= y.mean(axis=0)
        if verbose and ((step + 1) % 50 == 0 or step + 1 == iterations):
            q = np.maximum(num / total, 1e-12)
            kl = float(np.sum(p * np.log(p / q)))
            print(f"t-SNE iteration {step + 1}/{iterations}: KL(P||Q) = {kl:.4f}")
    return y.astype("float32")


# ---------------------------------------------------------------------------
# Scatter plot of an embedding.
# ---------------------------------------------------------------------------


def _balanced_subsample(labels, max_points, seed):
    """Sorted indices of at most `max_points` points, as even over classes as possible.

    Each point gets a random rank within its class; points are taken by
    rank, so every class contributes equally until the small ones run out.
    """
    labels = np.asarray(labels)
    if len(labels) <= max_points:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    rank = np.empty(len(labels), dtype="int64")
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        rank[members] = rng.permutation(len(members))
    # Within one rank, classes are taken in random order (the tie breaker).
    order = np.lexsort((rng.random(len(labels)), rank))
    return np.sort(order[:max_points])


def _class_name(class_names, value):
    if class_names is None:
        return str(value)
    if isinstance(class_names, dict):
        return str(class_names.get(value, class_names.get(str(value), value)))
    try:
        return str(class_names[int(value)])
    except (IndexError, ValueError, TypeError):
        return str(value)


def _colours(count):
    """`count` distinguishable colours: tab10, tab20, then a sampled turbo map."""
    import matplotlib

    if count <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(count)]
    return [matplotlib.colormaps["turbo"](v) for v in np.linspace(0.0, 1.0, count)]


def embedding_scatter(
    features,
    labels,
    path,
    method="tsne",
    class_names=None,
    title=None,
    max_points=2000,
    seed=0,
    size=(6, 6),
    dpi=100,
):
    """Writes a PNG scatter plot of a 2-d embedding of features, coloured by class.

    At most `max_points` points are drawn, subsampled class-balanced with
    `seed` (every class keeps as many points as the smallest allows), then
    embedded with `tsne` (`seed` seeds it too; perplexity 30, or a third of
    the points when there are fewer than 91) or `pca`. The figure is
    `size` inches at `dpi`, saved uncropped: `size[0] * dpi` by
    `size[1] * dpi` pixels.

    Args:
        features: `[N, D]` features.
        labels: `[N]` class labels, or `None` for one colour and no legend.
        path: the PNG file to write.
        method: `"tsne"` or `"pca"`. Defaults to `"tsne"`.
        class_names: names in the legend: a list indexed by label or a dict
            label -> name. Defaults to `None` (the labels themselves).
        title: axes title. Defaults to `None` (the method and point count).
        max_points: largest number of points drawn. Defaults to `2000`.
        seed: seed of the subsample and of t-SNE. Defaults to `0`.
        size: figure `(width, height)` in inches. Defaults to `(6, 6)`.
        dpi: pixels per inch. Defaults to `100`.

    Returns:
        `path`.

    Example:

    >>> features = kcl.evaluation.embed(model.encoder, x_test)
    >>> kcl.pictures.embedding_scatter(features, y_test, "tsne.png",
    ...     class_names=["T-shirt", "Trouser", "Pullover", "Dress", "Coat",
    ...                  "Sandal", "Shirt", "Sneaker", "Bag", "Boot"])
    """
    features = _check_features(features)
    if method not in ("tsne", "pca"):
        raise ValueError(f'`method` must be "tsne" or "pca". Received: method={method!r}')
    if not isinstance(max_points, (int, np.integer)) or max_points < 3:
        raise ValueError(
            f"`max_points` must be an integer of at least 3. Received: max_points={max_points}"
        )
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(features):
            raise ValueError(
                f"One label per feature is needed. Received: {len(features)} features "
                f"and labels.shape={labels.shape}"
            )
    groups = labels if labels is not None else np.zeros(len(features))
    chosen = _balanced_subsample(groups, max_points, seed)
    features = features[chosen]
    if features.shape[1] < 2:
        # One feature: draw it against a zero second axis.
        features = np.concatenate([features, np.zeros_like(features)], axis=1)
    if method == "tsne":
        # Perplexity 30 needs about 90 points; fewer get a third of theirs.
        perplexity = min(30.0, (len(features) - 1) / 3.0)
        xy = tsne(features, perplexity=perplexity, seed=seed, max_points=len(features))
    else:
        xy = pca(features, dims=2)

    plt = pyplot()
    figure, axis = plt.subplots(figsize=size)
    marker_size = float(np.clip(3000.0 / len(xy), 2.0, 30.0))
    if labels is None:
        axis.scatter(xy[:, 0], xy[:, 1], s=marker_size, color="C0", linewidths=0)
    else:
        labels = labels[chosen]
        classes = np.unique(labels)
        for value, colour in zip(classes, _colours(len(classes))):
            here = labels == value
            axis.scatter(
                xy[here, 0],
                xy[here, 1],
                s=marker_size,
                color=colour,
                linewidths=0,
                label=_class_name(class_names, value),
            )
        axis.legend(
            loc="best",
            fontsize=7,
            markerscale=max(1.0, 20.0 / marker_size) ** 0.5,
            ncol=max(1, math.ceil(len(classes) / 12)),
            framealpha=0.8,
        )
    axis.set_xticks([])
    axis.set_yticks([])
    if title is None:
        title = f"{'t-SNE' if method == 'tsne' else 'PCA'} of {len(xy)} points"
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------
# Retrieval: nearest neighbours and the grid of images.
# ---------------------------------------------------------------------------


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_neighbours(query_features, gallery_features, k, exclude_self=False, batch_size=1024):
    """Top-`k` gallery items of each query by cosine similarity.

    Ties are broken by the lower gallery index, so results are
    deterministic. With `exclude_self=True`, query and gallery are the same
    set (same length, row i the same item) and each query's own row is left
    out of its neighbours.

    Args:
        query_features: `[Q, D]` features.
        gallery_features: `[G, D]` features.
        k: neighbours per query, at most G (G - 1 with `exclude_self`).
        exclude_self: leave out gallery row i for query i. Defaults to
            `False`.
        batch_size: queries compared at a time (memory is `batch_size x G`).
            Defaults to `1024`.

    Returns:
        `(indices, similarities)`: int64 `[Q, k]` gallery indices and
        float32 `[Q, k]` cosine similarities, most similar first.

    Example:

    >>> features = kcl.evaluation.embed(encoder, x_test)
    >>> indices, similarities = kcl.pictures.nearest_neighbours(
    ...     features, features, k=5, exclude_self=True)
    """
    query = _check_features(query_features, "query_features")
    gallery = _check_features(gallery_features, "gallery_features")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"Query and gallery features must have the same dimension. Received: "
            f"query_features.shape={query.shape}, gallery_features.shape={gallery.shape}"
        )
    if exclude_self and len(query) != len(gallery):
        raise ValueError(
            "`exclude_self=True` needs the query and gallery to be the same set. Received: "
            f"query_features.shape={query.shape}, gallery_features.shape={gallery.shape}"
        )
    available = len(gallery) - int(bool(exclude_self))
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= available:
        raise ValueError(
            f"`k` must be an integer in [1, {available}] (the gallery size"
            f"{' less the query itself' if exclude_self else ''}). Received: k={k}"
        )
    query, gallery = _unit(query), _unit(gallery)
    indices = np.empty((len(query), k), dtype="int64")
    similarities = np.empty((len(query), k), dtype="float32")
    for start in range(0, len(query), batch_size):
        rows = slice(start, start + batch_size)
        scores = query[rows] @ gallery.T  # [b, G]
        if exclude_self:
            own = np.arange(start, start + len(scores))
            scores[np.arange(len(scores)), own] = -np.inf
        # A stable sort of -scores keeps equal scores in gallery order.
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        indices[rows] = top
        similarities[rows] = np.take_along_axis(scores, top, axis=1)
    return indices, similarities


def _check_uint8_images(images, name):
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ValueError(
            f"`{name}` must be uint8 [N, H, W, C] with C = 1 or 3 (add a channel axis to "
            f"grey images: x[..., None]). Received: {name}.shape={array.shape}"
        )
    if array.dtype != np.uint8:
        raise ValueError(
            f"`{name}` must be uint8; convert images in [0, 1] with "
            f"np.uint8(np.rint(x * 255)). Received: {name}.dtype={array.dtype}"
        )
    return array


def _show(axis, image):
    """Draws one uint8 `[H, W, C]` image without ticks, keeping the frame."""
    if image.shape[-1] == 1:
        axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        axis.imshow(image)
    axis.set_xticks([])
    axis.set_yticks([])


def _frame(axis, colour, width=3.0):
    for spine in axis.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def retrieval_grid(
    query_images,
    gallery_images,
    query_features,
    gallery_features,
    path,
    k=8,
    query_labels=None,
    gallery_labels=None,
    num_queries=8,
    seed=0,
    dpi=100,
    exclude_self=False,
):
    """Writes a PNG grid of queries and their nearest gallery images.

    `num_queries` queries are drawn at random with `seed` (all of them if
    there are fewer); each row shows the query, then its `k` nearest gallery
    images by cosine similarity of the features (`nearest_neighbours`), each
    titled with its similarity. With labels, each neighbour is framed green
    when its label equals the query's and red otherwise, and the query's
    precision@k (the fraction of green frames) is written under it; the
    title gives the mean precision@k of the rows shown. The figure is
    `1.25 * (k + 1)` by `1.5 * rows + 0.5` inches (`rows` the queries
    drawn), saved uncropped at `dpi`.

    Args:
        query_images: uint8 `[Q, H, W, C]`, C = 1 or 3.
        gallery_images: uint8 `[G, H', W', C]`.
        query_features: `[Q, D]` features of the queries.
        gallery_features: `[G, D]` features of the gallery.
        path: the PNG file to write.
        k: neighbours per row. Defaults to `8`.
        query_labels: `[Q]` labels; give both labels or neither. Defaults to
            `None`.
        gallery_labels: `[G]` labels. Defaults to `None`.
        num_queries: rows drawn. Defaults to `8`.
        seed: seed of the choice of queries. Defaults to `0`.
        dpi: pixels per inch. Defaults to `100`.
        exclude_self: query and gallery are the same set; leave each query
            out of its own neighbours. Defaults to `False`.

    Returns:
        `path`.

    Example:

    >>> features = kcl.evaluation.embed(encoder, x_test)
    >>> kcl.pictures.retrieval_grid(x_test, x_test, features, features, "retrieval.png",
    ...     query_labels=y_test, gallery_labels=y_test, exclude_self=True)
    """
    query_images = _check_uint8_images(query_images, "query_images")
    gallery_images = _check_uint8_images(gallery_images, "gallery_images")
    for images, features, name in (
        (query_images, query_features, "query"),
        (gallery_images, gallery_features, "gallery"),
    ):
        if len(images) != len(np.asarray(features)):
            raise ValueError(
                f"One {name} feature per {name} image is needed. Received: "
                f"{name}_images.shape={images.shape}, {name}_features.shape={np.shape(features)}"
            )
    if (query_labels is None) != (gallery_labels is None):
        raise ValueError(
            "Give both `query_labels` and `gallery_labels`, or neither. Received: "
            f"query_labels is {'None' if query_labels is None else 'set'}, "
            f"gallery_labels is {'None' if gallery_labels is None else 'set'}"
        )
    labelled = query_labels is not None
    if labelled:
        query_labels = np.asarray(query_labels).reshape(-1)
        gallery_labels = np.asarray(gallery_labels).reshape(-1)
        for labels, images, name in (
            (query_labels, query_images, "query"),
            (gallery_labels, gallery_images, "gallery"),
        ):
            if len(labels) != len(images):
                raise ValueError(
                    f"One label per {name} image is needed. Received: "
                    f"{name}_images.shape={images.shape}, {name}_labels.shape={labels.shape}"
                )
    num_queries = check_positive_int("num_queries", num_queries)

    indices, similarities = nearest_neighbours(
        query_features, gallery_features, k, exclude_self=exclude_self
    )
    rng = np.random.default_rng(seed)
    rows = np.sort(
        rng.choice(len(query_images), size=min(num_queries, len(query_images)), replace=False)
    )

    plt = pyplot()
    figure, axes = plt.subplots(
        len(rows), k + 1, figsize=(1.25 * (k + 1), 1.5 * len(rows) + 0.5), squeeze=False
    )
    precisions = []
    for axes_row, q in zip(axes, rows):
        _show(axes_row[0], query_images[q])
        axes_row[0].set_title("query" + (f" ({query_labels[q]})" if labelled else ""), fontsize=8)
        _frame(axes_row[0], "black", 2.0)
        if labelled:
            matches = gallery_labels[indices[q]] == query_labels[q]
            precisions.append(float(matches.mean()))
            axes_row[0].set_xlabel(f"P@{k} = {matches.mean():.2f}", fontsize=8)
        for j, axis in enumerate(axes_row[1:]):
            _show(axis, gallery_images[indices[q, j]])
            axis.set_title(f"{similarities[q, j]:.2f}", fontsize=8)
            if labelled:
                _frame(axis, "tab:green" if matches[j] else "tab:red")
    heading = f"top-{k} cosine neighbours"
    if labelled:
        heading += f", mean precision@{k} = {np.mean(precisions):.2f}"
    figure.suptitle(heading, fontsize=10)
    figure.subplots_adjust(
        left=0.02,
        right=0.98,
        bottom=0.02,
        top=1.0 - 0.6 / (1.5 * len(rows) + 0.5),
        wspace=0.15,
        hspace=0.45,
    )
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------
# Saliency: Grad-CAM of encoder features.
# ---------------------------------------------------------------------------


def saliency_maps(encoder, images, layer=None, target=None, batch_size=64):
    """Grad-CAM saliency maps of an encoder's features, `[N, H, W]` in [0, 1].

    Grad-CAM (Selvaraju et al. 2017) weighs the channels of a convolutional
    feature map A `[h, w, C]` by the spatial mean of the gradient of a score
    with respect to them and keeps the positive part:
    map = ReLU(sum_c mean_xy(d score / d A_c) A_c). A self-supervised encoder
    has no class, so the default score is the squared L2 norm of its
    feature vector; `target` gives any other score (e.g. a supervised
    classifier's logit, see `supervised_baseline`). Maps are upsampled
    bilinearly to the image size and divided by their maximum per image (an
    all-zero map stays zero), so 1 marks the most salient pixel.

    Images (uint8, or float in [0, 255]) are divided by 255 as
    `kcl.evaluation.embed` does; the encoder runs in inference mode.

    Args:
        encoder: a `keras.Model` from views in [0, 1] to features (a kcl
            backbone, or a kcl method, whose `.encoder` is used).
        images: `[N, H, W, C]` images in [0, 255].
        layer: name of the feature-map layer. Defaults to `None`: the last
            layer of `encoder` with a 4-d output (channels last).
        target: `None` (squared feature norm) or a callable
            `target(features) -> [N]` scores, taking the encoder's output
            tensor and written in differentiable TensorFlow or Keras ops.
            Defaults to `None`.
        batch_size: images per gradient computation. Defaults to `64`.

    Returns:
        `[N, H, W]` float32 maps in [0, 1].

    Example:

    >>> maps = kcl.pictures.saliency_maps(model.encoder, x_test[:16])
    >>> kcl.pictures.saliency_figure(x_test[:16], [maps], "saliency.png",
    ...     titles=("image", "SimCLR"))

    References:
        - Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391
    """
    import tensorflow as tf

    encoder = getattr(encoder, "encoder", encoder)
    check_images(encoder, images)
    if target is not None and not callable(target):
        raise ValueError(
            f"`target` must be None or a callable features -> [N] scores. Received: target={target!r}"
        )
    batch_size = check_positive_int("batch_size", batch_size)
    candidates = backbones.feature_map_layers(encoder)
    if not candidates:
        raise ValueError(
            "Grad-CAM needs a layer with a 4-d output [N, h, w, C] (a feature map); the "
            f"encoder {encoder.name!r} has none. Received: encoder with layers "
            f"{[layer.name for layer in encoder.layers]}"
        )
    if layer is None:
        layer = candidates[-1]
    elif layer not in candidates:
        raise ValueError(
            f"`layer` must name a layer of the encoder with a 4-d output; candidates: "
            f"{candidates}. Received: layer={layer!r}"
        )
    model = keras.Model(encoder.inputs, [encoder.get_layer(layer).output, encoder.outputs[0]])

    images = np.asarray(images)
    height, width = images.shape[1:3]
    maps = []
    for start in range(0, len(images), batch_size):
        x = tf.convert_to_tensor(images[start : start + batch_size], dtype="float32") / 255.0
        with tf.GradientTape() as tape:
            # Watching the input records every op, so the gradient exists even
            # for an encoder without trainable weights before the feature map.
            tape.watch(x)
            feature_map, features = model(x, training=False)
            if target is None:
                flat = tf.reshape(features, [tf.shape(features)[0], -1])
                scores = tf.reduce_sum(tf.square(flat), axis=1)
            else:
                scores = tf.reshape(target(features), [-1])
            # Images are independent in inference mode, so the gradient of the
            # sum holds each image's own gradient.
            total = tf.reduce_sum(scores)
        gradient = tape.gradient(total, feature_map)  # [b, h, w, C]
        if gradient is None:
            raise ValueError(
                f"The score does not depend on layer {layer!r}. Received: layer={layer!r}"
            )
        weights = tf.reduce_mean(gradient, axis=[1, 2], keepdims=True)  # [b, 1, 1, C]
        cam = tf.nn.relu(tf.reduce_sum(weights * feature_map, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, (height, width), method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
        cam = tf.where(peak > 0, cam / tf.where(peak > 0, peak, 1.0), 0.0)
        maps.append(np.clip(cam.numpy(), 0.0, 1.0).astype("float32"))
    return np.concatenate(maps, axis=0)


def saliency_overlap(maps_a, maps_b, top=0.2):
    """IoU of the most salient pixels of two sets of maps, image by image.

    For each image, the `top` fraction of pixels with the highest values is
    taken from each map (exactly `max(1, round(top * H * W))` pixels; equal
    values are taken in raster order) and the intersection over union of
    the two sets is returned. PIC (Cao et al. 2020) compares self-supervised
    and supervised saliency this way: 1 means both models look at the same
    pixels, 0 at disjoint ones (chance is about top / (2 - top)).

    Args:
        maps_a: `[N, H, W]` maps.
        maps_b: `[N, H, W]` maps of the same images.
        top: fraction of pixels kept, in (0, 1]. Defaults to `0.2`.

    Returns:
        `{"iou": [N] float32, "mean": float}`.

    Example:

    >>> ssl = kcl.pictures.saliency_maps(model.encoder, x_test[:256])
    >>> sup = kcl.pictures.saliency_maps(supervised, x_test[:256], target=target)
    >>> kcl.pictures.saliency_overlap(ssl, sup)["mean"]

    References:
        - Cao et al. 2020, https://arxiv.org/abs/2008.01668
    """
    a, b = np.asarray(maps_a), np.asarray(maps_b)
    if a.ndim != 3 or a.shape != b.shape:
        raise ValueError(
            "`maps_a` and `maps_b` must be [N, H, W] arrays of the same shape. Received: "
            f"maps_a.shape={a.shape}, maps_b.shape={b.shape}"
        )
    if not 0 < top <= 1:
        raise ValueError(f"`top` must be in (0, 1]. Received: top={top}")
    n, pixels = len(a), a.shape[1] * a.shape[2]
    keep = max(1, math.floor(top * pixels + 0.5))

    def top_mask(maps):
        order = np.argsort(-maps.reshape(n, pixels), axis=1, kind="stable")[:, :keep]
        mask = np.zeros((n, pixels), dtype=bool)
        np.put_along_axis(mask, order, True, axis=1)
        return mask

    mask_a, mask_b = top_mask(a), top_mask(b)
    intersection = np.sum(mask_a & mask_b, axis=1)
    union = np.sum(mask_a | mask_b, axis=1)
    iou = (intersection / union).astype("float32")
    return {"iou": iou, "mean": float(iou.mean()) if n else float("nan")}


def supervised_baseline(encoder, train, epochs=3, batch_size=128, learning_rate=1e-3, seed=0):
    """Trains the encoder's architecture with labels: the supervised reference for saliency.

    The encoder is cloned with fresh weights (`keras.models.clone_model`),
    topped with a `Dense(num_classes)` head and trained with Adam and
    softmax cross-entropy on `(images, labels)` (images divided by 255, as
    everywhere in kcl). `seed` seeds Keras' global random generators
    (initialisation and shuffling), as `keras.utils.set_random_seed` does.

    Args:
        encoder: a `keras.Model` (or a kcl method) whose architecture is
            copied; its weights are left alone.
        train: `(images, labels)`: `[N, H, W, C]` images in [0, 255] and
            `[N]` int labels.
        epochs: training epochs. Defaults to `3`.
        batch_size: batch size. Defaults to `128`.
        learning_rate: Adam learning rate. Defaults to `1e-3`.
        seed: random seed. Defaults to `0`.

    Returns:
        `(supervised_encoder, classifier, target)`: the trained copy of the
        encoder, the classifier `images in [0, 1] -> logits` built on it,
        and `target(features) -> [N]`, the logit of the predicted class,
        to pass to `saliency_maps(supervised_encoder, ..., target=target)`.

    Example:

    >>> supervised, classifier, target = kcl.pictures.supervised_baseline(
    ...     model.encoder, (x_train, y_train), epochs=3)
    >>> ssl = kcl.pictures.saliency_maps(model.encoder, x_test[:64])
    >>> sup = kcl.pictures.saliency_maps(supervised, x_test[:64], target=target)
    """
    import tensorflow as tf

    encoder = getattr(encoder, "encoder", encoder)
    try:
        images, labels = train
    except (TypeError, ValueError):
        raise ValueError(
            f"`train` must be a pair (images, labels). Received: train of type {type(train).__name__}"
        ) from None
    check_images(encoder, images)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(images):
        raise ValueError(
            f"One label per image is needed. Received: images.shape={np.shape(images)}, "
            f"labels.shape={labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError(
            f"`labels` must be non-negative integers. Received: labels.dtype={labels.dtype}, "
            f"min={labels.min()}"
        )
    num_classes = int(labels.max() + 1)

    keras.utils.set_random_seed(seed)
    supervised = keras.models.clone_model(encoder)
    head = keras.layers.Dense(num_classes, name="supervised_logits")
    inputs = keras.Input(encoder.input_shape[1:])
    classifier = keras.Model(inputs, head(supervised(inputs)), name="supervised_classifier")
    classifier.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    dataset = (
        tf.data.Dataset.from_tensor_slices((np.asarray(images), labels.astype("int64")))
        .shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(lambda x, y: (tf.cast(x, "float32") / 255.0, y))
    )
    # The dataset is shuffled above; fit must not try to shuffle it again.
    classifier.fit(dataset, epochs=epochs, shuffle=False, verbose=0)

    def target(features):
        # The predicted class is the arg max, so its logit is the largest one.
        return tf.reduce_max(head(features), axis=-1)

    return supervised, classifier, target


def saliency_figure(
    images,
    maps,
    path,
    titles=("image", "self-supervised", "supervised"),
    num_images=8,
    dpi=100,
):
    """Writes a PNG of images and their saliency maps side by side.

    One row per image (the first `num_images`), one column for the image and
    one per set of maps, each map drawn over the image with the jet colour
    map at alpha 0.5 (blue 0, red 1). The figure is `1.5 * columns` by
    `1.5 * rows` inches, saved uncropped at `dpi`.

    Args:
        images: uint8 `[N, H, W, C]`, C = 1 or 3.
        maps: list of `[N, H, W]` maps in [0, 1] (e.g. `saliency_maps`
            results), or one such array.
        path: the PNG file to write.
        titles: column titles, one for the image and one per set of maps.
            Defaults to `("image", "self-supervised", "supervised")`.
        num_images: rows drawn. Defaults to `8`.
        dpi: pixels per inch. Defaults to `100`.

    Returns:
        `path`.

    Example:

    >>> kcl.pictures.saliency_figure(x_test[:8], [ssl, sup], "saliency.png")
    """
    images = _check_uint8_images(images, "images")
    if isinstance(maps, np.ndarray) and maps.ndim == 3:
        maps = [maps]
    maps = [np.asarray(m, dtype="float32") for m in maps]
    if not maps:
        raise ValueError("`maps` must hold at least one [N, H, W] array. Received: maps=[]")
    for i, m in enumerate(maps):
        if m.shape != images.shape[:3]:
            raise ValueError(
                f"Each set of maps must be [N, H, W] like the images {images.shape[:3]}. "
                f"Received: maps[{i}].shape={m.shape}"
            )
    titles = list(titles)
    if len(titles) != len(maps) + 1:
        raise ValueError(
            f"One title for the image and one per set of maps ({len(maps) + 1} in all) is "
            f"needed. Received: titles={tuple(titles)}"
        )
    num_images = check_positive_int("num_images", num_images)

    rows, columns = min(num_images, len(images)), len(maps) + 1
    plt = pyplot()
    figure, axes = plt.subplots(rows, columns, figsize=(1.5 * columns, 1.5 * rows), squeeze=False)
    for i, axes_row in enumerate(axes):
        _show(axes_row[0], images[i])
        for axis, m in zip(axes_row[1:], maps):
            _show(axis, images[i])
            axis.imshow(m[i], cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0, interpolation="bilinear")
    for axis, title in zip(axes[0], titles):
        axis.set_title(title, fontsize=9)
    figure.subplots_adjust(
        left=0.02, right=0.98, bottom=0.02, top=1.0 - 0.3 / (1.5 * rows), wspace=0.05, hspace=0.05
    )
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path
