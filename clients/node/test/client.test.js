'use strict';
// The client against a real `vae serve`: tests/integration/test_node_client.py starts the server and
// sets VAE_TARGET, and VAE_EXPECTED, a JSON file with the Python client's answer to the same seeded
// Sample, and VAE_SCALED_MODEL, an imported AutoencoderKL (1 -> 2 channels, factor 4, a scale and a shift)
// served beside it. Without VAE_TARGET only the helper tests run.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const { describe, it, after } = require('node:test');
const grpc = require('@grpc/grpc-js');

const {
  VaeClient,
  float32FromBytes,
  float32Tensor,
  float32ToBytes,
  fromTensor,
  labelList,
  loadService,
  uint8Tensor,
} = require('..');

function assertUnitInterval(values) {
  assert.ok(values.every((v) => v >= 0 && v <= 1), 'values outside [0, 1]');
}

function rpcError(promise, code) {
  return assert.rejects(promise, (error) => {
    assert.equal(error.code, code, `${grpc.status[error.code]}: ${error.details}`);
    return true;
  });
}

describe('float32 helpers', () => {
  it('read little-endian floats from a Buffer at an odd byte offset', () => {
    const values = [0, 1, -2.5, 0.1, 3.4e38];
    const backing = Buffer.alloc(1 + 4 * values.length);
    float32ToBytes(values).copy(backing, 1);
    const unaligned = backing.subarray(1); // byteOffset 1: a Float32Array view would throw
    assert.equal(unaligned.byteOffset % 4, 1);
    assert.deepEqual(Array.from(float32FromBytes(unaligned)), Array.from(Float32Array.from(values)));
    assert.deepEqual([...float32ToBytes([1]).values()], [0x00, 0x00, 0x80, 0x3f]); // 1.0f, LE
  });

  it('refuse data that is not whole floats, and shapes that do not match', () => {
    assert.throws(() => float32FromBytes(Buffer.alloc(6)), RangeError);
    assert.throws(() => float32Tensor([1, 2, 3], [2, 2]), RangeError);
  });

  it('carry tensors of any rank: spatial latents [n, C, h, w] and RGB pixels as uint8', () => {
    const latents = float32Tensor(new Float32Array(2 * 4 * 3 * 5), [2, 4, 3, 5]);
    assert.deepEqual(fromTensor({ ...latents, shape: latents.shape }).shape, [2, 4, 3, 5]);
    const rgb = Uint8Array.from({ length: 3 * 2 * 2 }, (_, i) => i * 20);
    const back = fromTensor(uint8Tensor(rgb.subarray(0), [1, 3, 2, 2]));
    assert.deepEqual(back.shape, [1, 3, 2, 2]);
    assert.deepEqual(Array.from(back.values), Array.from(rgb));
    assert.throws(() => uint8Tensor(rgb, [1, 3, 2, 3]), RangeError);
  });

  it('read int64 shapes that arrive as strings', () => {
    const tensor = { shape: ['2', '1'], dtype: 'DTYPE_FLOAT32', data: float32ToBytes([0.5, 1]) };
    assert.deepEqual(fromTensor(tensor).shape, [2, 1]);
  });
});

describe('labels', () => {
  it('take one class index for all items, or one per item', () => {
    assert.deepEqual(labelList(7), [7]);
    assert.deepEqual(labelList([0, 2, 1]), [0, 2, 1]);
    assert.deepEqual(labelList(Uint8Array.of(3, 0)), [3, 0]);
  });

  it('refuse what protobufjs would silently turn into another class', () => {
    for (const bad of [-1, 1.5, ['7'], 2 ** 32]) {
      assert.throws(() => labelList(bad), TypeError);
    }
  });
});

const target = process.env.VAE_TARGET;

describe('against a server', { skip: !target && 'VAE_TARGET is not set' }, () => {
  const client = new VaeClient(target);
  after(() => client.close());

  it('samples what the Python client samples with the same seed, byte for byte', async () => {
    const expected = JSON.parse(fs.readFileSync(process.env.VAE_EXPECTED, 'utf8'));
    const result = await client.sample(expected.n, { seed: expected.seed });
    assert.deepEqual(result.images.shape, expected.images_shape);
    assert.deepEqual(result.latents.shape, expected.latents_shape);
    assertUnitInterval(result.images.values);
    assert.ok(float32ToBytes(result.images.values).equals(Buffer.from(expected.images, 'base64')));
    assert.ok(float32ToBytes(result.latents.values).equals(Buffer.from(expected.latents, 'base64')));
    assert.equal(result.model.name, 'tiny');
  });

  it('encodes images and decodes latents', async () => {
    const { images, latents } = await client.sample(3, { seed: 1 });
    const { mu, logvar } = await client.encode(images);
    assert.deepEqual(mu.shape, latents.shape);
    assert.deepEqual(logvar.shape, latents.shape);
    assert.ok(mu.values.every(Number.isFinite));
    const decoded = await client.decode(mu);
    assert.deepEqual(decoded.images.shape, images.shape);
    assertUnitInterval(decoded.images.values);
    const pixels = await client.decode(mu, { outputDtype: 'uint8' });
    assert.ok(pixels.images.values instanceof Uint8Array);
    assert.deepEqual(pixels.images.shape, images.shape);
  });

  it('encodes uint8 pixels as their float32 values in [0, 1]', async () => {
    const { images } = await client.sample(2, { seed: 3, outputDtype: 'uint8' });
    assert.ok(images.values instanceof Uint8Array);
    const fromPixels = await client.encode(images);
    const scaled = { shape: images.shape, values: Float32Array.from(images.values, (v) => v / 255) };
    const fromFloats = await client.encode(scaled);
    assert.deepEqual(fromPixels.mu.shape, fromFloats.mu.shape);
    fromPixels.mu.values.forEach((v, i) => assert.ok(Math.abs(v - fromFloats.mu.values[i]) <= 1e-5, `${i}`));
  });

  it('gets INVALID_ARGUMENT for an invalid request and a misspelt field', async () => {
    await rpcError(client.sample(0), grpc.status.INVALID_ARGUMENT);
    const latents = { values: new Float32Array(3), shape: [1, 3] }; // the tiny model's latent is 8
    await rpcError(client.decode(latents), grpc.status.INVALID_ARGUMENT);
    // proto-loader drops a field name it does not know: the server sees no latents at all.
    await rpcError(client.call('Decode', { latent: float32Tensor([0], [1, 1]) }), grpc.status.INVALID_ARGUMENT);
    // The tiny model is unconditional: labels reach the server, which refuses them.
    await assert.rejects(client.sample(1, { labels: 1 }), (error) => {
      assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
      assert.match(error.details, /^labels: model 'tiny' is unconditional/);
      return true;
    });
  });

  it('refuses a misspelt output dtype, which proto3 would turn into 0 (float32)', async () => {
    await assert.rejects(client.sample(1, { outputDtype: 'unit8' }), TypeError);
    const response = await client.call('Sample', { n: 1, output_dtype: 'DTYPE_UNIT8' });
    assert.equal(response.images.dtype, 'DTYPE_FLOAT32');
  });

  it("reads an imported model's ModelInfo and encodes and decodes its scaled latents", async () => {
    const imported = new VaeClient(target, { model: { name: process.env.VAE_SCALED_MODEL } });
    after(() => imported.close());
    const info = await imported.modelInfo();
    assert.deepEqual([info.image_channels, info.image_size, info.image_multiple_of], [1, [], 4]);
    assert.deepEqual([info.latent_channels, info.latent_downsampling, info.latent_dim], [2, 4, 0]);
    assert.deepEqual([info.value_range, info.decoder_output, info.scorable], [[-1, 1], 'image', false]);
    const { scaling_factor: scale, shift_factor: shift } = info;
    assert.ok(scale > 0 && shift !== 0, `scaling ${scale}, shift ${shift}`);
    const pixels = { shape: [1, 1, 8, 12], values: Uint8Array.from({ length: 96 }, (_, i) => (i * 37) % 256) };
    const plain = await imported.encode(pixels);
    const scaled = await imported.encode(pixels, { scaled: true });
    assert.deepEqual(scaled.mu.shape, [1, 2, 2, 3]);
    plain.mu.values.forEach((v, i) => assert.ok(Math.abs((v - shift) * scale - scaled.mu.values[i]) <= 1e-5, `${i}`));
    const fromPlain = await imported.decode(plain.mu);
    const fromScaled = await imported.decode(scaled.mu, { scaled: true });
    assert.deepEqual(fromScaled.images.shape, [1, 1, 8, 12]);
    fromPlain.images.values.forEach((v, i) => assert.ok(Math.abs(v - fromScaled.images.values[i]) <= 1e-4, `${i}`));
    // Sampling at a size: the model declares no prior, and the server says so.
    await rpcError(imported.sample(1, { height: 8, width: 12 }), grpc.status.FAILED_PRECONDITION);
  });

  it('needs the raised message limit: grpc-js receives 4 MiB by default', async () => {
    const VaeService = loadService();
    const plain = new VaeService(target, grpc.credentials.createInsecure());
    after(() => plain.close());
    const n = 1338; // 1338 images of 1x28x28 float32 are 4,195,968 bytes, over 4 MiB on their own
    const call = new Promise((resolve, reject) => {
      plain.Sample({ n }, (error, response) => (error ? reject(error) : resolve(response)));
    });
    await rpcError(call, grpc.status.RESOURCE_EXHAUSTED);
    const result = await client.sample(n);
    assert.deepEqual(result.images.shape, [n, 1, 28, 28]);
  });
});
