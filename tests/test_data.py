"""Data loading: validation messages, seeded shuffling, batching."""
import numpy as np
import pytest
import tensorflow as tf

from exburn_tf import data as D


def _xy(n=10):
    x = np.arange(n * 2, dtype="float32").reshape(n, 2)
    y = np.arange(n, dtype="int64")
    return x, y


def _orders(dataset, passes):
    """The sample order (read from y = sample index) of each pass over `dataset`."""
    return [np.concatenate([yb.numpy() for _, yb in dataset]) for _ in range(passes)]


def test_same_seed_same_orders_and_new_order_each_pass():
    x, y = _xy(50)
    first = _orders(D.make_dataset(x, y, 8, shuffle=True, seed=3), 3)
    second = _orders(D.make_dataset(x, y, 8, shuffle=True, seed=3), 3)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(np.sort(a), y)  # a permutation: every sample once
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[1], first[2])
    other = _orders(D.make_dataset(x, y, 8, shuffle=True, seed=4), 1)
    assert not np.array_equal(first[0], other[0])


def test_creating_iterators_advances_to_later_passes():
    # How a resumed run catches up: e untouched iterators, then pass e + 1.
    x, y = _xy(50)
    expected = _orders(D.make_dataset(x, y, 8, shuffle=True, seed=3), 3)[2]
    resumed = D.make_dataset(x, y, 8, shuffle=True, seed=3)
    iter(resumed), iter(resumed)
    np.testing.assert_array_equal(_orders(resumed, 1)[0], expected)


def test_x_and_y_stay_paired_when_shuffled():
    x, y = _xy(20)
    for xb, yb in D.make_dataset(x, y, 6, shuffle=True, seed=0):
        np.testing.assert_array_equal(xb.numpy()[:, 0], 2 * yb.numpy())


def test_no_shuffle_keeps_order_and_partial_last_batch():
    x, y = _xy(10)
    dataset = D.data_loader((x, y), batch_size=4, shuffle=False)
    sizes = [int(tf.shape(yb)[0]) for _, yb in dataset]
    assert sizes == [4, 4, 2]
    np.testing.assert_array_equal(_orders(dataset, 1)[0], y)
    assert dataset.element_spec[0].shape.as_list() == [None, 2]
    assert dataset.element_spec[1].shape.as_list() == [None]


def test_drop_remainder():
    x, y = _xy(10)
    dataset = D.data_loader((x, y), batch_size=4, shuffle=True, seed=1, drop_remainder=True)
    assert [int(tf.shape(yb)[0]) for _, yb in dataset] == [4, 4]
    assert dataset.element_spec[0].shape.as_list() == [4, 2]


def test_partial_batch_does_not_retrace():
    # A step traced with the dataset's element_spec (batch dim None) serves every batch.
    x, y = _xy(10)
    dataset = D.data_loader((x, y), batch_size=4, seed=0)
    traces = []

    @tf.function(input_signature=dataset.element_spec)
    def step(xb, yb):
        traces.append(1)
        return tf.reduce_sum(xb)

    for _ in range(2):
        for xb, yb in dataset:
            step(xb, yb)
    assert len(traces) == 1


def test_data_loader_is_reiterable_with_new_orders():
    x, y = _xy(40)
    loader = D.data_loader((x, y), batch_size=16, seed=5)
    first, second = _orders(loader, 2)
    assert len(first) == len(second) == 40
    assert not np.array_equal(first, second)


def test_data_loader_returns_a_dataset_as_is():
    dataset = tf.data.Dataset.from_tensor_slices(_xy(4)).batch(2)
    assert D.data_loader(dataset, batch_size=7, shuffle=False) is dataset


def test_multi_input_dict_and_tuple():
    n = 6
    x = {"a": np.ones((n, 3), "float32"), "b": np.zeros((n, 1), "float32")}
    y = np.arange(n)
    x_checked, _ = D.validate_arrays(x, y)
    assert set(x_checked) == {"a", "b"}
    batches = list(D.data_loader((x, y), batch_size=4, shuffle=False))
    assert [int(b[0]["a"].shape[0]) for b in batches] == [4, 2]
    assert batches[0][0]["b"].shape == (4, 1)
    assert D.num_samples(x) == n
    x_tuple, _ = D.validate_arrays((x["a"], x["b"]), y)
    assert isinstance(x_tuple, tuple) and len(x_tuple) == 2
    with pytest.raises(ValueError) as info:
        D.validate_arrays({"a": x["a"], "b": x["b"][:5]}, y)
    assert str(info.value) == "data: x['a'] and x['b'] have different lengths: 6 != 5"


def test_validate_returns_numpy_from_lists_and_tensors():
    x, y = D.validate_arrays([[1.0, 2.0], [3.0, 4.0]], tf.constant([0, 1]))
    assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
    assert x.shape == (2, 2)


@pytest.mark.parametrize("x, y, name, error, message", [
    (np.array(["a", "b"], dtype=object), np.zeros(2), "data", TypeError,
     "data: x must be numeric, got dtype object"),
    (np.zeros((100, 2)), np.zeros(99), "data", ValueError,
     "data: x and y have different lengths: 100 != 99"),
    (np.zeros((0, 2)), np.zeros(0), "data", ValueError, "data is empty: x has 0 samples"),
    (np.where(np.arange(400) % 100 == 7, np.nan, 0.0).reshape(100, 4), np.zeros(100), "data",
     ValueError, "data: x contains NaN or Inf values (4 of 400 elements)"),
    (np.zeros((3, 1)), np.array([0.0, np.inf, 1.0]), "validation_data", ValueError,
     "validation_data: y contains NaN or Inf values (1 of 3 elements)"),
    (np.zeros((0, 1)), np.zeros(0), "validation_data", ValueError,
     "validation_data is empty: x has 0 samples"),
    (np.float32(1.0), np.zeros(1), "data", ValueError,
     "data: x must have a sample dimension, got a scalar"),
])
def test_validate_arrays_messages(x, y, name, error, message):
    with pytest.raises(error) as info:
        D.validate_arrays(x, y, name=name)
    assert str(info.value) == message


@pytest.mark.parametrize("data, error, message", [
    (3, TypeError, "validation_data must be an (x, y) pair, an (x, y, sample_weight) triple "
                   "or a tf.data.Dataset of such batches, got <class 'int'>"),
    ((1, 2, 3, 4), ValueError, "validation_data must be an (x, y) pair, an (x, y, "
                               "sample_weight) triple or a tf.data.Dataset of such batches, "
                               "got a tuple of length 4"),
    ((1, 2, 3), ValueError, "validation_data: sample weights are not taken here; got an "
                            "(x, y, sample_weight) triple"),
])
def test_unpack_messages(data, error, message):
    with pytest.raises(error) as info:
        D.unpack(data, "validation_data")
    assert str(info.value) == message


def test_unpack_pair():
    assert D.unpack([1, 2]) == (1, 2)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"batch_size": 0}, ValueError, "batch_size must be a positive integer, got 0"),
    ({"batch_size": 2.5}, TypeError, "batch_size must be a positive integer, got 2.5"),
    ({"batch_size": True}, TypeError, "batch_size must be a positive integer, got True"),
    ({"shuffle": 1}, TypeError, "shuffle must be a bool, got 1"),
    ({"drop_remainder": "no"}, TypeError, "drop_remainder must be a bool, got 'no'"),
    ({"seed": 1.5}, TypeError, "seed must be an integer or None, got 1.5"),
    ({"batch_size": 32, "drop_remainder": True}, ValueError,
     "data has 10 samples, fewer than batch_size=32 with drop_remainder=True"),
])
def test_data_loader_option_messages(kwargs, error, message):
    with pytest.raises(error) as info:
        D.data_loader(_xy(10), **kwargs)
    assert str(info.value) == message


def test_num_batches():
    assert D.num_batches(10, 4, drop_remainder=False) == 3
    assert D.num_batches(10, 4, drop_remainder=True) == 2
    assert D.num_batches(8, 4, drop_remainder=False) == 2
    assert D.num_samples(np.zeros((7, 3))) == 7
