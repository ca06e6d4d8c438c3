'use strict';
// A small Node.js client of vae.v1.VaeService: Sample, Encode, Decode, GetModelInfo, and float32 helpers.
// It loads protos/vae/v1/vae.proto at run time with @grpc/proto-loader, so no generated code exists
// to go stale. README.md shows its use; docs/api.md ("Clients in other languages") says why each
// setting below matters.

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');

// The server's own limit. grpc-js receives at most 4 MiB by default, which a Sample of about 1,300
// 28x28 float32 images already exceeds (RESOURCE_EXHAUSTED), so the client raises it to match.
const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

// The Python clients' channel policy (wire/channel.py): spread calls over every address the target
// resolves to, and send a call that ended UNAVAILABLE (it never ran) again with backoff.
const SERVICE_CONFIG = {
  loadBalancingConfig: [{ round_robin: {} }],
  methodConfig: [
    {
      name: [{ service: 'vae.v1.VaeService' }],
      retryPolicy: {
        maxAttempts: 5,
        initialBackoff: '0.05s',
        maxBackoff: '1s',
        backoffMultiplier: 2,
        retryableStatusCodes: ['UNAVAILABLE'],
      },
    },
  ],
};

// longs: String, because int64 shape dimensions and uint64 seeds do not fit a JS number in general;
// enums: String, so dtypes read as 'DTYPE_FLOAT32'; defaults, so absent fields read as 0 / ''.
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

function loadService(protoRoot = PROTO_ROOT) {
  const definition = protoLoader.loadSync('vae/v1/vae.proto', { ...LOADER_OPTIONS, includeDirs: [protoRoot] });
  return grpc.loadPackageDefinition(definition).vae.v1.VaeService;
}

/** float32 values from little-endian bytes (a Buffer or Uint8Array, at any byte offset). */
function float32FromBytes(bytes) {
  if (bytes.byteLength % 4 !== 0) {
    throw new RangeError(`float32 data needs a multiple of 4 bytes, got ${bytes.byteLength}`);
  }
  // Not `new Float32Array(buf.buffer, buf.byteOffset, n)`: grpc-js hands out Buffers that are slices
  // of larger ones at offsets that need not be multiples of 4 (a RangeError), and a typed array
  // reads the host's byte order. DataView copies each value out, little-endian, from any offset.
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const values = new Float32Array(bytes.byteLength / 4);
  for (let i = 0; i < values.length; i += 1) {
    values[i] = view.getFloat32(4 * i, true);
  }
  return values;
}

/** Little-endian float32 bytes of numbers (a Float32Array, or any numbers, rounded to float32). */
function float32ToBytes(values) {
  const bytes = Buffer.alloc(4 * values.length);
  for (let i = 0; i < values.length; i += 1) {
    bytes.writeFloatLE(values[i], 4 * i);
  }
  return bytes;
}

function shapeSize(shape) {
  return shape.reduce((size, dim) => size * dim, 1);
}

/** A float32 Tensor message: shape (numbers) and values, checked against each other. */
function float32Tensor(values, shape) {
  if (shapeSize(shape) !== values.length) {
    throw new RangeError(`shape [${shape}] holds ${shapeSize(shape)} values, got ${values.length}`);
  }
  return { shape: shape.map(String), dtype: 'DTYPE_FLOAT32', data: float32ToBytes(values) };
}

/** A uint8 Tensor message (images as 0..255 pixels: a quarter of float32's bytes). */
function uint8Tensor(values, shape) {
  if (shapeSize(shape) !== values.length) {
    throw new RangeError(`shape [${shape}] holds ${shapeSize(shape)} values, got ${values.length}`);
  }
  const data = Buffer.from(values.buffer, values.byteOffset, values.length);
  return { shape: shape.map(String), dtype: 'DTYPE_UINT8', data };
}

/** A Tensor message as {shape: numbers of any rank, values: Float32Array or Uint8Array}. */
function fromTensor(tensor) {
  // int64 dimensions arrive as strings (longs: String); every real one is a safe integer.
  const shape = tensor.shape.map(Number);
  if (!shape.every(Number.isSafeInteger)) {
    throw new RangeError(`tensor shape [${tensor.shape}] is not a list of integers`);
  }
  if (tensor.dtype === 'DTYPE_UINT8') {
    return { shape, values: Uint8Array.from(tensor.data) };
  }
  if (tensor.dtype !== 'DTYPE_FLOAT32') {
    throw new TypeError(`unexpected tensor dtype ${tensor.dtype}`);
  }
  return { shape, values: float32FromBytes(tensor.data) };
}

const OUTPUT_DTYPES = { float32: 'DTYPE_FLOAT32', uint8: 'DTYPE_UINT8' };

function outputDtype(name) {
  // proto3 turns an enum name it does not know into 0 without a word (float32 here), so a misspelt
  // name is refused on this side instead.
  if (!(name in OUTPUT_DTYPES)) {
    throw new TypeError(`outputDtype must be 'float32' or 'uint8', got ${JSON.stringify(name)}`);
  }
  return OUTPUT_DTYPES[name];
}

/**
 * A conditional model's labels as the request field takes them: one class index for every item, or
 * an array (or typed array) with one per item. protobufjs would turn 1.5 into 1 and -1 into
 * 4294967295 without a word, so anything but non-negative integers is refused here.
 */
function labelList(labels) {
  const list = typeof labels === 'number' ? [labels] : Array.from(labels);
  if (!list.every((label) => Number.isInteger(label) && label >= 0 && label < 2 ** 32)) {
    throw new TypeError(`labels must be class indices (integers from 0), got ${JSON.stringify(labels)}`);
  }
  return list;
}

/** The request with `labels` set when given (conditional models only). */
function withLabels(request, labels) {
  return labels === undefined ? request : { ...request, labels: labelList(labels) };
}

/**
 * Promise-based client. Options: credentials (grpc.credentials.createSsl(...) for TLS; plaintext by
 * default), token (sent as `authorization: Bearer <token>`), timeoutSeconds (each call's deadline),
 * maxMessageBytes (both directions), model ({name, version}; empty: the server's default, newest).
 */
class VaeClient {
  constructor(target, options = {}) {
    const {
      credentials = grpc.credentials.createInsecure(),
      token = null,
      timeoutSeconds = 30,
      maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES,
      model = {},
      protoRoot = PROTO_ROOT,
    } = options;
    const VaeService = loadService(protoRoot);
    this.stub = new VaeService(target, credentials, {
      'grpc.max_receive_message_length': maxMessageBytes,
      'grpc.max_send_message_length': maxMessageBytes,
      'grpc.service_config': JSON.stringify(SERVICE_CONFIG),
    });
    this.token = token;
    this.timeoutSeconds = timeoutSeconds;
    this.model = { name: model.name ?? '', version: model.version ?? 0 };
  }

  /** One unary call as a promise; rejects with the grpc-js error (`.code` is a grpc.status). */
  call(method, request) {
    const metadata = new grpc.Metadata();
    if (this.token) {
      metadata.set('authorization', `Bearer ${this.token}`);
    }
    const deadline = new Date(Date.now() + this.timeoutSeconds * 1000);
    return new Promise((resolve, reject) => {
      this.stub[method]({ model: this.model, ...request }, metadata, { deadline }, (error, response) =>
        error ? reject(error) : resolve(response),
      );
    });
  }

  /**
   * The model's ModelInfo message as the server sends it, every field of the proto included (loaded at
   * run time): image_channels, image_size ([] for any size, multiples of image_multiple_of),
   * value_range, latent_channels, latent_downsampling (0: a flat latent), scaling_factor,
   * shift_factor, decoder_output, has_prior, scorable, prior_flow_layers, classes, ...
   */
  async modelInfo() {
    const info = await this.call('GetModelInfo', {});
    // int64 fields arrive as strings (longs: String); these are small counts and sizes.
    return { ...info, image_shape: info.image_shape.map(Number), image_size: info.image_size.map(Number) };
  }

  /**
   * n images from the prior: {model, images [n, C, H, W], latents [n, ...]}. A conditional model takes
   * `labels` (here and in encode and decode): one class index for all, or an array with one per item.
   * `height` and `width`: the size, for a model that takes any size.
   */
  async sample(n, { seed, temperature, outputDtype: dtype = 'float32', labels, height = 0, width = 0 } = {}) {
    const request = { n, output_dtype: outputDtype(dtype), height, width };
    if (seed !== undefined) {
      request.seed = String(seed); // uint64: a string keeps seeds above 2**53 exact
    }
    if (temperature !== undefined) {
      request.temperature = temperature;
    }
    const response = await this.call('Sample', withLabels(request, labels));
    return { model: response.model, images: fromTensor(response.images), latents: fromTensor(response.latents) };
  }

  /**
   * Images {shape [n, C, H, W], values: numbers in [0, 1], or a Uint8Array of 0..255 pixels sent as
   * uint8} -> {model, mu, logvar}, each [n, ...the model's latent shape]: [n, D], or [n, C, h, w].
   * `scaled`: latents as a diffusion pipeline uses them, (z - shift_factor) * scaling_factor.
   */
  async encode(images, { labels, scaled = false } = {}) {
    const tensor = images.values instanceof Uint8Array ? uint8Tensor : float32Tensor;
    const request = { images: tensor(images.values, images.shape), scaled };
    const response = await this.call('Encode', withLabels(request, labels));
    return { model: response.model, mu: fromTensor(response.mu), logvar: fromTensor(response.logvar) };
  }

  /** Latents {values, shape [n, D] or [n, C, h, w]} -> {model, images [n, C, H, W]}; `scaled`: a pipeline's. */
  async decode(latents, { outputDtype: dtype = 'float32', labels, scaled = false } = {}) {
    const request = {
      latents: float32Tensor(latents.values, latents.shape),
      output_dtype: outputDtype(dtype),
      scaled,
    };
    const response = await this.call('Decode', withLabels(request, labels));
    return { model: response.model, images: fromTensor(response.images) };
  }

  close() {
    this.stub.close();
  }
}

module.exports = {
  DEFAULT_MAX_MESSAGE_BYTES,
  PROTO_ROOT,
  SERVICE_CONFIG,
  VaeClient,
  float32FromBytes,
  float32Tensor,
  float32ToBytes,
  fromTensor,
  labelList,
  loadService,
  uint8Tensor,
};
