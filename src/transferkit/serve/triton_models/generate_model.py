"""Triton python-backend model (decoupled): a generative model run by the ONNX Runtime GenAI generator.

Copied into ``<name>/<version>/model.py`` beside ``generation_spec.json`` and ``model/`` (one exported variant:
``model.onnx``, ``genai_config.json``, ``tokenizer.json``). Inputs: ``text_input`` (the user message; the chat
template's prefix and suffix from the spec wrap it), optional ``max_tokens``, ``temperature`` (0 or absent:
the saved settings, greedy by default), ``top_p``, ``seed``, ``stream`` and ``adapter`` (the name of a LoRA adapter file
``model/adapters/<name>.onnx_adapter`` loaded at start; absent: the base model). Output: ``text_output``. With
``stream`` true every new piece of text is sent as it is produced (Triton's ``generate_stream`` endpoint and gRPC
streaming); without it one response carries the whole text (``generate``). Requests run on worker threads, each
with its own generator (KV cache); a cancelled request (client gone) stops and frees its generator. Bad input is
refused per request with INVALID_ARG (HTTP 400) and a one-line message.
"""

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class RequestError(ValueError):
    """A request the model refuses (sent back as INVALID_ARG)."""


def _scalar(request, name, kind):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise RequestError(f"{name}: expected one value, got {values.size}")
    value = values[0]
    if kind is str:
        return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    return kind(value)


class TritonPythonModel:
    """Tokenize, generate token by token with ONNX Runtime GenAI, stream the text."""

    def initialize(self, args):
        """Load the spec, the tokenizer and the GenAI model; start the worker pool."""
        import onnxruntime_genai as og
        from tokenizers import Tokenizer

        here = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(here, "generation_spec.json"), encoding="utf-8") as handle:
            self.spec = json.load(handle)
        self.og = og
        self.model = og.Model(os.path.join(here, "model"))
        self.tokenizer = Tokenizer.from_file(os.path.join(here, "model", "tokenizer.json"))
        self.adapters, self.adapter_names = None, []
        adapter_dir = os.path.join(here, "model", "adapters")
        if os.path.isdir(adapter_dir):
            for file in sorted(os.listdir(adapter_dir)):
                if file.endswith(".onnx_adapter"):
                    if self.adapters is None:
                        self.adapters = og.Adapters(self.model)
                    self.adapters.load(os.path.join(adapter_dir, file), file[: -len(".onnx_adapter")])
                    self.adapter_names.append(file[: -len(".onnx_adapter")])
        parameters = json.loads(args["model_config"]).get("parameters", {})
        workers = int(parameters.get("max_concurrent_requests", {}).get("string_value", "4"))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="generate")
        self.lock = threading.Lock()
        self.active = 0
        self.logger = pb_utils.Logger
        self.logger.log_info(f"generative model loaded from {here} ({workers} concurrent requests, adapters: "
                             f"{', '.join(self.adapter_names) or 'none'})")

    def execute(self, requests):
        """Hand every request to a worker thread; responses go through each request's sender."""
        for request in requests:
            self.pool.submit(self._serve, request, request.get_response_sender())
        return None

    def _options(self, request):
        spec = self.spec
        text = _scalar(request, "text_input", str)
        if text is None or not text.strip():
            raise RequestError("text_input: empty prompt; expected the text to continue")
        max_tokens = _scalar(request, "max_tokens", int)
        limit = int(spec["max_tokens_limit"])
        if max_tokens is None:
            max_tokens = int(spec["max_new_tokens"])
        if not 1 <= max_tokens <= limit:
            raise RequestError(f"max_tokens: {max_tokens} must be in [1, {limit}]")
        temperature = _scalar(request, "temperature", float)
        top_p = _scalar(request, "top_p", float)
        if temperature is not None and not 0 <= temperature <= 100:
            raise RequestError(f"temperature: {temperature:g} must be in [0, 100] (0: greedy)")
        if top_p is not None and not 0 < top_p <= 1:
            raise RequestError(f"top_p: {top_p:g} must be in (0, 1]")
        fmt = spec["prompt"]
        ids = self.tokenizer.encode(fmt["prefix"] + text + fmt["suffix"],
                                    add_special_tokens=bool(fmt["add_special_tokens"])).ids
        if ids and fmt.get("drop_trailing_id") is not None and ids[-1] == fmt["drop_trailing_id"]:
            ids = ids[:-1]
        context = int(spec["context_length"])
        if len(ids) + max_tokens > context:
            raise RequestError(f"text_input: the prompt has {len(ids)} tokens; with max_tokens {max_tokens} it "
                               f"exceeds the model's context of {context} tokens")
        search = {"max_length": len(ids) + max_tokens}
        if temperature:
            search.update(do_sample=True, temperature=temperature, top_p=top_p if top_p is not None else 1.0)
            seed = _scalar(request, "seed", int)
            if seed is not None:
                search["random_seed"] = seed
        elif temperature == 0:
            search["do_sample"] = False
        adapter = _scalar(request, "adapter", str) or None
        if adapter is not None and adapter not in self.adapter_names:
            known = ", ".join(self.adapter_names) or "none (the model has no adapter files)"
            raise RequestError(f"adapter: unknown adapter {adapter!r}; this model serves: {known}")
        return ids, search, bool(_scalar(request, "stream", bool)), adapter

    def _send(self, sender, text, flags=0):
        output = pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_))
        sender.send(pb_utils.InferenceResponse(output_tensors=[output]), flags=flags)

    def _serve(self, request, sender):
        try:
            ids, search, stream, adapter = self._options(request)
        except (RequestError, ValueError, TypeError) as exc:
            error = pb_utils.TritonError(str(exc).splitlines()[0], pb_utils.TritonError.INVALID_ARG)
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
            return
        with self.lock:
            self.active += 1
        generator = None
        try:
            params = self.og.GeneratorParams(self.model)
            params.set_search_options(**search)
            generator = self.og.Generator(self.model, params)
            if adapter is not None:
                generator.set_active_adapter(self.adapters, adapter)
            generator.append_tokens(ids)
            tokens, sent = [], ""
            while not generator.is_done():
                if sender.is_cancelled():
                    self.logger.log_info(f"request cancelled after {len(tokens)} tokens; generator freed")
                    break
                generator.generate_next_token()
                tokens.append(int(generator.get_next_tokens()[0]))
                if stream:
                    text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                    if text != sent and not text.endswith("\ufffd"):  # a whole character is ready
                        self._send(sender, text[len(sent):] if text.startswith(sent) else text)
                        sent = text
            if stream:
                sender.send(flags=FINAL)
            else:
                self._send(sender, self.tokenizer.decode(tokens, skip_special_tokens=True).strip(), flags=FINAL)
        except Exception as exc:
            self.logger.log_error(f"generation failed: {type(exc).__name__}: {exc}")
            error = pb_utils.TritonError(f"generation failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            try:
                sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
            except Exception as send_exc:
                self.logger.log_warn(f"could not send the error: {send_exc}")
        finally:
            del generator
            with self.lock:
                self.active -= 1

    def finalize(self):
        """Wait for running requests, then drop the model."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.model = None
