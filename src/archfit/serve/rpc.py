"""The Open Inference Protocol's gRPC service (KServe v2 `inference.GRPCInferenceService`, as
Triton's clients call it) beside HTTP: the same Server, batchers and checks answer both.

The messages are declared here as a table and built into a private descriptor pool at import,
instead of protoc-generated code: generated modules are tied to the protobuf runtime's major
version (ray, tensorflow and grpcio each pin protobuf differently), a descriptor works on any.
Field numbers are the protocol's (KServe's grpc_predict_v2.proto; InferParameter's double and
uint64 choices are Triton's superset, which tritonclient sends `priority` in)."""
from __future__ import annotations

import asyncio
import time
from functools import lru_cache
from types import SimpleNamespace

import torch

from .._version import __version__
from ..errors import InputError
from .protocol import InferRequest, RequestError, Strings, pack_bytes, raw_tensor, tensor_from

_TENSOR_META = [("name", 1, "string"), ("datatype", 2, "string"), ("shape", 3, "*int64")]
# message -> [(field, number, type)]; "*T" repeated, "map:T" map<string, T>, "T|choice" in oneof `choice`;
# a nested message (Outer.Inner) after its outer one
_MESSAGES = {
    "ServerLiveRequest": [], "ServerLiveResponse": [("live", 1, "bool")],
    "ServerReadyRequest": [], "ServerReadyResponse": [("ready", 1, "bool")],
    "ModelReadyRequest": [("name", 1, "string"), ("version", 2, "string")],
    "ModelReadyResponse": [("ready", 1, "bool")],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [("name", 1, "string"), ("version", 2, "string"), ("extensions", 3, "*string")],
    "ModelMetadataRequest": [("name", 1, "string"), ("version", 2, "string")],
    "ModelMetadataResponse": [("name", 1, "string"), ("versions", 2, "*string"), ("platform", 3, "string"),
                              ("inputs", 4, "*ModelMetadataResponse.TensorMetadata"),
                              ("outputs", 5, "*ModelMetadataResponse.TensorMetadata")],
    "ModelMetadataResponse.TensorMetadata": _TENSOR_META,
    "InferParameter": [("bool_param", 1, "bool|parameter_choice"), ("int64_param", 2, "int64|parameter_choice"),
                       ("string_param", 3, "string|parameter_choice"),
                       ("double_param", 4, "double|parameter_choice"), ("uint64_param", 5, "uint64|parameter_choice")],
    "InferTensorContents": [("bool_contents", 1, "*bool"), ("int_contents", 2, "*int32"),
                            ("int64_contents", 3, "*int64"), ("uint_contents", 4, "*uint32"),
                            ("uint64_contents", 5, "*uint64"), ("fp32_contents", 6, "*float"),
                            ("fp64_contents", 7, "*double"), ("bytes_contents", 8, "*bytes")],
    "ModelInferRequest": [("model_name", 1, "string"), ("model_version", 2, "string"), ("id", 3, "string"),
                          ("parameters", 4, "map:InferParameter"),
                          ("inputs", 5, "*ModelInferRequest.InferInputTensor"),
                          ("outputs", 6, "*ModelInferRequest.InferRequestedOutputTensor"),
                          ("raw_input_contents", 7, "*bytes")],
    "ModelInferRequest.InferInputTensor": _TENSOR_META + [("parameters", 4, "map:InferParameter"),
                                                          ("contents", 5, "InferTensorContents")],
    "ModelInferRequest.InferRequestedOutputTensor": [("name", 1, "string"), ("parameters", 2, "map:InferParameter")],
    "ModelInferResponse": [("model_name", 1, "string"), ("model_version", 2, "string"), ("id", 3, "string"),
                           ("parameters", 4, "map:InferParameter"),
                           ("outputs", 5, "*ModelInferResponse.InferOutputTensor"),
                           ("raw_output_contents", 6, "*bytes")],
    "ModelInferResponse.InferOutputTensor": _TENSOR_META + [("parameters", 4, "map:InferParameter"),
                                                            ("contents", 5, "InferTensorContents")],
    # the model repository extension, as Triton's service has it
    "ModelRepositoryParameter": [("bool_param", 1, "bool|parameter_choice"), ("int64_param", 2, "int64|parameter_choice"),
                                 ("string_param", 3, "string|parameter_choice"),
                                 ("bytes_param", 4, "bytes|parameter_choice")],
    "RepositoryIndexRequest": [("repository_name", 1, "string"), ("ready", 2, "bool")],
    "RepositoryIndexResponse": [("models", 1, "*RepositoryIndexResponse.ModelIndex")],
    "RepositoryIndexResponse.ModelIndex": [("name", 1, "string"), ("version", 2, "string"), ("state", 3, "string"),
                                           ("reason", 4, "string")],
    "RepositoryModelLoadRequest": [("repository_name", 1, "string"), ("model_name", 2, "string"),
                                   ("parameters", 3, "map:ModelRepositoryParameter")],
    "RepositoryModelLoadResponse": [],
    "RepositoryModelUnloadRequest": [("repository_name", 1, "string"), ("model_name", 2, "string"),
                                     ("parameters", 3, "map:ModelRepositoryParameter")],
    "RepositoryModelUnloadResponse": [],
}
# rpc -> (request, response)
_RPCS = {name: (f"{name}Request", f"{name}Response")
         for name in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
                      "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")}
SERVICE = "inference.GRPCInferenceService"
# the datatype's field of InferTensorContents (FP16 and BF16 travel only as raw contents)
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}


@lru_cache(maxsize=1)
def messages() -> SimpleNamespace:
    """The protocol's message classes, by name (nested ones as Outer.Inner)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    scalars = {"bool": F.TYPE_BOOL, "string": F.TYPE_STRING, "bytes": F.TYPE_BYTES, "int32": F.TYPE_INT32,
               "int64": F.TYPE_INT64, "uint32": F.TYPE_UINT32, "uint64": F.TYPE_UINT64, "float": F.TYPE_FLOAT,
               "double": F.TYPE_DOUBLE}
    file = descriptor_pb2.FileDescriptorProto(name="archfit/open_inference_v2.proto", package="inference",
                                              syntax="proto3")
    protos: dict[str, descriptor_pb2.DescriptorProto] = {}

    def field(msg, name, number, kind, label=F.LABEL_OPTIONAL):
        f = msg.field.add(name=name, number=number, label=label)
        if kind in scalars:
            f.type = scalars[kind]
        else:
            f.type, f.type_name = F.TYPE_MESSAGE, f".inference.{kind}"
        return f

    for full, fields in _MESSAGES.items():
        outer, _, inner = full.rpartition(".")
        msg = protos[outer].nested_type.add(name=inner) if outer else file.message_type.add(name=inner)
        protos[full] = msg
        for name, number, kind in fields:
            kind, _, choice = kind.partition("|")
            if kind.startswith("map:"):  # map<string, T>: a repeated nested Entry with map_entry set
                entry = msg.nested_type.add(name=name.title().replace("_", "") + "Entry")
                entry.options.map_entry = True
                field(entry, "key", 1, "string")
                field(entry, "value", 2, kind[4:])
                field(msg, name, number, f"{full}.{entry.name}", F.LABEL_REPEATED)
            elif kind.startswith("*"):
                field(msg, name, number, kind[1:], F.LABEL_REPEATED)
            else:
                f = field(msg, name, number, kind)
                if choice:
                    if not msg.oneof_decl or msg.oneof_decl[-1].name != choice:
                        msg.oneof_decl.add(name=choice)
                    f.oneof_index = len(msg.oneof_decl) - 1
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(file.SerializeToString())
    return SimpleNamespace(**{full.replace(".", "_"): message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"inference.{full}")) for full in _MESSAGES})


def _parameter(p) -> object:
    choice = p.WhichOneof("parameter_choice")
    return None if choice is None else getattr(p, choice)


def _binary(entry: dict, index: int, data: bytes):
    entry["parameters"] = {"binary_data_size": len(data)}
    return tensor_from(entry, index, memoryview(data))


def infer_request(msg) -> InferRequest:
    """A ModelInferRequest as the HTTP decoder's InferRequest, through the same per-tensor checks."""
    raw = list(msg.raw_input_contents)
    if not msg.inputs:
        raise RequestError("the request has no inputs")
    if raw and len(raw) != len(msg.inputs):
        raise RequestError(f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs; send one per "
                           f"input, in the inputs' order")
    inputs = {}
    for i, t in enumerate(msg.inputs):
        entry = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if raw:
            if t.HasField("contents"):
                raise RequestError(f"input {t.name!r} has contents, and the request raw_input_contents: send one")
            name, value = _binary(entry, i, raw[i])
        elif t.datatype == "BYTES":  # as the binary form: elements stay bytes (images) or texts alike
            name, value = _binary(entry, i, pack_bytes(list(t.contents.bytes_contents)))
        else:
            field = _CONTENTS.get(t.datatype)
            if field is None:
                raise RequestError(f"input {t.name!r}: datatype {t.datatype!r} travels as raw_input_contents only")
            entry["data"] = list(getattr(t.contents, field))
            try:
                name, value = tensor_from(entry, i, None, literals=t.datatype == "BOOL")
            except RequestError as e:  # the checks name JSON's field; this request has contents instead
                raise RequestError(str(e.args[0]).replace("'data'", f"contents.{field}")) from None
        if name in inputs:
            raise RequestError(f"input {name!r} is given twice")
        inputs[name] = value
    outputs = {o.name: True for o in msg.outputs} or None
    params = {k: _parameter(v) for k, v in msg.parameters.items()}
    return InferRequest(inputs, msg.id or None, outputs, True, params)


def infer_response(name: str, request: InferRequest, outputs: dict[str, torch.Tensor | Strings]):
    m = messages()
    response = m.ModelInferResponse(model_name=name, model_version="1", id=request.id or "")
    for out in (request.outputs or outputs):
        datatype, shape, data = raw_tensor(outputs[out])
        response.outputs.add(name=out, datatype=datatype, shape=shape)
        response.raw_output_contents.append(data)
    return response


# an HTTP status the Server answers with -> the gRPC code a client sees (KServe's mapping)
def _code(status: int):
    import grpc

    return {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
            413: grpc.StatusCode.RESOURCE_EXHAUSTED, 499: grpc.StatusCode.CANCELLED,
            503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}.get(status, grpc.StatusCode.INTERNAL)


class Service:
    """The RPCs, each answering from the Server as its HTTP route does."""

    def __init__(self, server):
        self.server = server

    async def ServerLive(self, request, context):
        return messages().ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return messages().ServerReadyResponse(ready=self.server.ready)

    async def ServerMetadata(self, request, context):
        return messages().ServerMetadataResponse(name="archfit", version=__version__, extensions=["binary_tensor_data"])

    async def _model(self, name: str, version: str, context):
        found = self.server.find(name, version or None)
        if isinstance(found, tuple):  # (status, message)
            await context.abort(_code(found[0]), found[1])
        return found

    async def ModelReady(self, request, context):
        await self._model(request.name, request.version, context)
        return messages().ModelReadyResponse(ready=self.server.ready)

    async def ModelMetadata(self, request, context):
        meta = (await self._model(request.name, request.version, context)).metadata()
        m = messages()
        return m.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[m.ModelMetadataResponse_TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[m.ModelMetadataResponse_TensorMetadata(**t) for t in meta["outputs"]])

    async def ModelInfer(self, request, context):
        from .app import Refused, bad_request

        start, name, status, bucket = time.perf_counter(), request.model_name, 200, "-"
        await self._model(name, request.model_version, context)
        try:
            try:
                req = infer_request(request)
            except Exception as e:  # noqa: BLE001 - as HTTP answers a body: one line, INVALID_ARGUMENT
                raise bad_request(e) from e
            # a client that cancels (or passes its deadline) cancels this task: the request leaves the queue
            outputs, bucket = await self.server.answer(name, req)
            return infer_response(name, req, outputs)
        except Refused as e:
            status = e.status
            await context.abort(_code(e.status), e.message)
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            self.server.metrics.answered(name, bucket, status, time.perf_counter() - start if status == 200 else None)

    async def RepositoryIndex(self, request, context):
        repository = await self._repository(context)
        m = messages()
        return m.RepositoryIndexResponse(models=[m.RepositoryIndexResponse_ModelIndex(**e.to_dict())
                                                 for e in repository.index(request.ready)])

    async def RepositoryModelLoad(self, request, context):
        await self._change((await self._repository(context)).load, request.model_name, context)
        return messages().RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        await self._change((await self._repository(context)).unload, request.model_name, context)
        return messages().RepositoryModelUnloadResponse()

    async def _repository(self, context):
        import grpc

        if self.server.repository is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the model repository is not served here")
        return self.server.repository

    async def _change(self, action, name: str, context) -> None:
        from .app import Refused

        try:
            await action(name)
        except Refused as e:
            await context.abort(_code(e.status), e.message)


def handler(server):
    """The generic handler that routes the service's RPCs to `Service(server)`."""
    import grpc

    service, m = Service(server), messages()
    methods = {rpc: grpc.unary_unary_rpc_method_handler(
        getattr(service, rpc), request_deserializer=getattr(m, req).FromString,
        response_serializer=getattr(m, resp).SerializeToString) for rpc, (req, resp) in _RPCS.items()}
    return grpc.method_handlers_generic_handler(SERVICE, methods)


async def start(server, address: str):
    """A gRPC server on `address` (host:port) answering from `server`, started on the running loop."""
    import grpc

    rpc = grpc.aio.server(options=[("grpc.max_receive_message_length", server.max_body),
                                   ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)])
    rpc.add_generic_rpc_handlers((handler(server),))
    try:
        rpc.add_insecure_port(address)
    except RuntimeError as e:
        raise InputError(f"--grpc-port: cannot listen on {address} ({e}); pick a free port") from e
    await rpc.start()
    return rpc
