"""FID Inception-v3 with random weights: shapes, determinism, batching invariance, converter."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.metrics import inception, inception_weights


@pytest.fixture(scope="module")
def variables():
    return inception.init_variables(0)


def test_batch_of_8_equals_one_by_one_and_is_deterministic(variables):
    model = inception.FIDInceptionV3()
    images = jax.random.uniform(jax.random.PRNGKey(1), (8, 28, 28, 1), minval=-1, maxval=1)
    apply = jax.jit(model.apply)
    features, logits = apply(variables, images)
    assert features.shape == (8, inception.FEATURE_DIM) and logits.shape == (8, 1008)
    assert features.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    # He-normal random weights keep the features O(1) and different for different images.
    assert 0.05 < float(jnp.mean(jnp.abs(features))) < 20
    assert float(jnp.mean(jnp.abs(features[0] - features[1]))) > 0.01
    again = apply(variables, images)
    np.testing.assert_array_equal(np.asarray(again[0]), np.asarray(features))
    # One forward over single images: lax.map keeps each call at batch 1.
    single = jax.jit(lambda v, x: jax.lax.map(lambda i: model.apply(v, i[None]), x))
    one_by_one = single(variables, images)
    scale = float(jnp.max(jnp.abs(features)))
    np.testing.assert_allclose(one_by_one[0][:, 0], features, atol=1e-4 * scale, rtol=1e-4)
    np.testing.assert_allclose(one_by_one[1][:, 0], logits, atol=1e-4 * scale, rtol=1e-4)


def test_preprocess_repeats_grey_and_resizes_to_299():
    images = jnp.linspace(-1, 1, 2 * 28 * 28).reshape(2, 28, 28, 1)
    out = inception.preprocess(images)
    assert out.shape == (2, 299, 299, 3)
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-6)
    assert float(out.min()) >= -1 - 1e-6 and float(out.max()) <= 1 + 1e-6
    # A constant image stays constant (bilinear weights sum to one).
    flat = inception.preprocess(jnp.full((1, 64, 64, 3), 0.25))
    np.testing.assert_allclose(flat, 0.25, atol=1e-6)


def to_torch_state_dict(variables):
    """Our variables -> pytorch-fid-style names and layouts (the converter's inverse)."""
    state = {}
    for path, value in flax.traverse_util.flatten_dict(variables).items():
        value = np.asarray(value)
        if path[-1] == "kernel":
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        state[inception_weights.torch_name(path)] = value
    return state


def test_converter_maps_a_torch_state_dict_onto_every_variable(variables, tmp_path):
    state = to_torch_state_dict(variables)
    assert "Mixed_7c.branch3x3dbl_3b.conv.weight" in state and "fc.weight" in state
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)  # torch OIHW
    assert len(state) == 94 * 5 + 2  # 94 BasicConv2d (conv + 4 bn) and the fc layer
    state["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0)  # ignored, like AuxLogits
    converted = inception_weights.convert(state)
    for path, value in flax.traverse_util.flatten_dict(variables).items():
        np.testing.assert_array_equal(
            flax.traverse_util.flatten_dict(converted)[path], value, err_msg=str(path)
        )
    # Through files: a torch-named .npz converts on load; our own .npz loads as is.
    np.savez(tmp_path / "torch.npz", **state)
    inception_weights.save_variables(converted, str(tmp_path / "ours.npz"))
    for name in ("torch.npz", "ours.npz"):
        loaded = flax.traverse_util.flatten_dict(
            inception_weights.load_variables(str(tmp_path / name))
        )
        assert loaded.keys() == flax.traverse_util.flatten_dict(variables).keys()
    del state["Mixed_5b.branch_pool.bn.running_var"]
    with pytest.raises(KeyError, match="Mixed_5b.branch_pool.bn.running_var"):
        inception_weights.convert(state)
