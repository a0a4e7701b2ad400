"""Evaluation of representations: kNN, linear probe, monitoring callback, plots,
and the papers' protocols: linear evaluation, semi-supervised fine-tuning on
class-balanced label subsets, and transfer to other datasets.

One module per seam, every public name here:

| module | what |
|---|---|
| `common` | `embed` (features of raw images), `pixels` (the raw-pixel baseline), centre crops, checks, the linear head |
| `knn` | `knn_classify`, `knn_accuracy` (weighted kNN of Wu et al. 2018), `KNNMonitor`, `plot_history` |
| `linear` | `fit_linear_probe`, `linear_probe` (a softmax on fixed features), `linear_eval` (the papers' protocol and stand-ins) |
| `subsets` | `label_subset`, `save_label_subset`, `load_label_subset` (seeded class-balanced 1% / 10%) |
| `semi_supervised` | `fine_tune` (semi-supervised fine-tuning on a label subset) |
| `transfer_learning` | `transfer` (linear evaluation on tfds datasets) |

Example:

>>> train_features = kcl.evaluation.embed(encoder, x_train)
>>> test_features = kcl.evaluation.embed(encoder, x_test)
>>> kcl.evaluation.knn_accuracy(train_features, y_train, test_features, y_test, k=200)
0.8299
"""

from kcl.evaluation.common import CENTRE_CROP, embed, pixels
from kcl.evaluation.knn import KNNMonitor, knn_accuracy, knn_classify, plot_history
from kcl.evaluation.linear import PROTOCOLS, fit_linear_probe, linear_eval, linear_probe
from kcl.evaluation.semi_supervised import fine_tune
from kcl.evaluation.subsets import label_subset, load_label_subset, save_label_subset
from kcl.evaluation.transfer_learning import transfer

__all__ = [
    "CENTRE_CROP",
    "KNNMonitor",
    "PROTOCOLS",
    "embed",
    "fine_tune",
    "fit_linear_probe",
    "knn_accuracy",
    "knn_classify",
    "label_subset",
    "linear_eval",
    "linear_probe",
    "load_label_subset",
    "pixels",
    "plot_history",
    "save_label_subset",
    "transfer",
]
