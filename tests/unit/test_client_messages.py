"""The clients' requests, result readers and channel settings, checked without a server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from client import requests, results
from service.config import ServiceConfig
from vae.v1 import vae_pb2 as pb
from wire import channel, tensors


def test_uint8_images_travel_as_they_are_and_others_as_float32() -> None:
    pixels = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4)
    assert requests.images_tensor(pixels).dtype == pb.DTYPE_UINT8
    as_float = requests.images_tensor(pixels.astype(np.float64) / 255)
    assert as_float.dtype == pb.DTYPE_FLOAT32
    np.testing.assert_allclose(tensors.to_numpy(as_float, "images"), pixels / 255, rtol=1e-6)


def test_requests_name_the_model_and_the_output_dtype() -> None:
    request = requests.decode_request(np.zeros((2, 3)), output_dtype="uint8", model="mnist", version=4)
    assert (request.model.name, request.model.version) == ("mnist", 4)
    assert request.output_dtype == pb.DTYPE_UINT8
    assert request.latents.dtype == pb.DTYPE_FLOAT32 and list(request.latents.shape) == [2, 3]
    sample = requests.sample_request(5)
    assert sample.n == 5 and not sample.HasField("seed") and not sample.HasField("temperature")


def test_interpolation_endpoints_are_latents_or_images_by_rank() -> None:
    by_latents = requests.interpolate_request(np.zeros(3), np.ones(3), steps=4, method="spherical")
    assert by_latents.WhichOneof("endpoints") == "latents"
    assert by_latents.method == pb.INTERPOLATION_METHOD_SPHERICAL
    image = np.zeros((1, 4, 4), np.float32)
    by_images = requests.interpolate_request(image, image, steps=4)
    assert by_images.WhichOneof("endpoints") == "images"
    with pytest.raises(ValueError, match=r"latents \[D\] or images \[C, H, W\], got shape \[2, 2\]"):
        requests.interpolate_request(np.zeros((2, 2)), np.zeros((2, 2)))


def test_results_read_responses_and_leave_z_out_when_not_sent() -> None:
    mu = np.ones((2, 3), np.float32)
    response = pb.EncodeResponse(
        model=pb.ModelRef(name="mnist", version=1), mu=tensors.tensor(mu), logvar=tensors.tensor(mu)
    )
    encoded = results.encoded(response)
    assert encoded.model == ("mnist", 1) and encoded.z is None
    np.testing.assert_array_equal(encoded.mu, mu)
    response.z.CopyFrom(tensors.tensor(np.zeros((2, 4, 3), np.float32)))
    z = results.encoded(response).z
    assert z is not None and z.shape == (2, 4, 3)


def test_channel_options_carry_the_limit_and_the_retry_policy() -> None:
    options = dict(channel.channel_options(1024))
    assert options["grpc.max_receive_message_length"] == options["grpc.max_send_message_length"] == 1024
    assert json.loads(str(options["grpc.service_config"])) == channel.SERVICE_CONFIG
    assert options["grpc.enable_retries"] == 1
    assert channel.call_metadata(None) is None
    assert channel.call_metadata("s3cret") == (("authorization", "Bearer s3cret"),)


def test_server_and_clients_default_to_the_same_message_limit() -> None:
    assert ServiceConfig().max_send_message_bytes == channel.DEFAULT_MAX_MESSAGE_BYTES


def test_labels_travel_one_for_all_or_one_per_item() -> None:
    assert list(requests.sample_request(4, seed=1, model="cvae", labels=7).labels) == [7]
    per_item = np.array([3, 0, 9], np.uint8)  # MNIST's own label dtype
    assert list(requests.decode_request(np.zeros((3, 2)), labels=per_item).labels) == [3, 0, 9]
    image = np.zeros((1, 1, 4, 4), np.float32)
    assert list(requests.encode_request(image, labels=[2]).labels) == [2]
    assert list(requests.reconstruct_request(image, output_dtype="uint8", labels=1).labels) == [1]
    assert list(requests.score_request(image, samples=8, seed=0, labels=[4]).labels) == [4]
    path = requests.interpolate_request(np.zeros(3), np.ones(3), steps=4, label=5)
    assert list(path.labels) == [5]
    # protobuf refuses what no class index can be, before anything is sent.
    with pytest.raises(ValueError, match="out of range"):
        requests.sample_request(1, labels=-1)
    with pytest.raises(TypeError):
        requests.sample_request(1, labels=[1.5])


def test_requests_without_labels_are_the_bytes_they_were_before_labels() -> None:
    # An unconditional model's requests must not change on the wire.
    sample = requests.sample_request(
        5, seed=3, temperature=0.5, output_dtype="uint8", model="mnist", version=1
    )
    assert (
        sample.SerializeToString()
        == pb.SampleRequest(
            model=pb.ModelRef(name="mnist", version=1),
            n=5,
            seed=3,
            temperature=0.5,
            output_dtype=pb.DTYPE_UINT8,
        ).SerializeToString()
    )
    assert not sample.labels


def test_model_info_reads_the_classes() -> None:
    message = pb.ModelInfo(name="mnist-cvae", version=1, classes=[str(i) for i in range(10)])
    assert results.model_info(message).classes == tuple("0123456789")
    assert results.model_info(pb.ModelInfo(name="mnist", version=1)).classes == ()
