"""Class-conditional generation (DiTConfig.conditioning = "class"): prompts → class labels. The
labels are sampled by soraj.sample_rows, with classifier-free guidance against the null label."""

import numpy as np


def class_labels(class_names, prompts) -> np.ndarray:
    """Class names (or their indices as text) → i32 labels (B, 1), refusing unknown ones."""
    labels = []
    for prompt in prompts:
        if prompt in class_names:
            labels.append(class_names.index(prompt))
        elif str(prompt).isdigit() and int(prompt) < len(class_names):
            labels.append(int(prompt))
        else:  # every name: the exact spelling is what the user needs
            raise ValueError(
                f"{prompt!r} is not a class of this model; allowed: a class name "
                f"({', '.join(class_names)}) or its index 0..{len(class_names) - 1}"
            )
    return np.asarray(labels, np.int32)[:, None]
