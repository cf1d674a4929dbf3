"""Data become one tensor on one device, whatever container they come in."""

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from pyro_vae.data import load_dataset
from pyro_vae.infer.runtime.devices import as_tensor, place, resolve_device


class Pairs(Dataset):
    def __init__(self, x):
        self.x_ = x

    def __len__(self):
        return len(self.x_)

    def __getitem__(self, i):
        return self.x_[i], i


@pytest.mark.parametrize(
    "wrap",
    [lambda x: x, TensorDataset, Pairs],
    ids=["tensor", "tensor-dataset", "dataset-of-pairs"],
)
def test_every_container_gives_the_same_tensor(wrap):
    x = torch.rand(7, 3)
    tensor, transform = as_tensor(wrap(x))
    assert torch.equal(tensor, x)
    assert transform(tensor) is tensor


def test_image_data_keeps_its_dynamic_binarization():
    data = load_dataset("digits", binarize="dynamic").train
    tensor, transform = as_tensor(data)
    assert tensor is data.x
    batch = transform(tensor[:50])
    assert set(batch.unique().tolist()) <= {0.0, 1.0} and not torch.equal(
        batch, transform(tensor[:50])
    )


def test_data_keep_their_dtype_and_bad_data_are_refused():
    integers = torch.arange(6).reshape(3, 2)
    assert as_tensor(integers)[0] is integers  # not cast: the pair doctor names a wrong dtype
    with pytest.raises(ValueError, match="no datapoints"):
        as_tensor(torch.zeros(0, 4))
    with pytest.raises(TypeError, match="tensor or a torch Dataset"):
        as_tensor([[1.0, 2.0]])


def test_cpu_placement_and_device_choice():
    assert place(torch.ones(2), torch.device("cpu")).device.type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


def test_as_columns_keeps_the_transform_and_the_dtype_of_extras():
    from pyro_vae.data import ImageData
    from pyro_vae.infer.runtime.devices import as_columns

    images = ImageData(torch.full((4, 4), 0.5), torch.arange(4), (2, 2), binarize="dynamic")
    x, extras, transform = as_columns((images, images.y))
    assert x is images.x and extras[0].dtype == torch.long
    assert set(transform(x).unique().tolist()) <= {0.0, 1.0}  # a fresh binarization
    assert as_columns(x)[1] == ()
    with pytest.raises(TypeError, match=r"data\[1\] must be a tensor, not list"):
        as_columns((x, [0, 1, 2, 3]))
    with pytest.raises(ValueError, match="empty tuple"):
        as_columns(())
