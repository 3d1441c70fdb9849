from flatscope.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictRequest(_message.Message):
    __slots__ = ("model_name", "inputs", "output_encoding")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    inputs: _tensor_pb2.Tensor
    output_encoding: _tensor_pb2.TensorEncoding
    def __init__(self, model_name: _Optional[str] = ..., inputs: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., output_encoding: _Optional[_Union[_tensor_pb2.TensorEncoding, str]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "outputs", "classes")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    outputs: _tensor_pb2.Tensor
    classes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., outputs: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., classes: _Optional[_Iterable[int]] = ...) -> None: ...

class InspectRequest(_message.Message):
    __slots__ = ("model_name", "inputs", "layer", "include_source", "coordinate_start", "coordinate_count", "output_encoding", "include_dense_kernel")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    COORDINATE_START_FIELD_NUMBER: _ClassVar[int]
    COORDINATE_COUNT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DENSE_KERNEL_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    inputs: _tensor_pb2.Tensor
    layer: str
    include_source: bool
    coordinate_start: int
    coordinate_count: int
    output_encoding: _tensor_pb2.TensorEncoding
    include_dense_kernel: bool
    def __init__(self, model_name: _Optional[str] = ..., inputs: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., layer: _Optional[str] = ..., include_source: bool = ..., coordinate_start: _Optional[int] = ..., coordinate_count: _Optional[int] = ..., output_encoding: _Optional[_Union[_tensor_pb2.TensorEncoding, str]] = ..., include_dense_kernel: bool = ...) -> None: ...

class InspectResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "flattened", "source", "outputs", "layout", "classes", "dense_kernel", "dense_layer")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FLATTENED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    DENSE_KERNEL_FIELD_NUMBER: _ClassVar[int]
    DENSE_LAYER_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    flattened: _tensor_pb2.Tensor
    source: _tensor_pb2.Tensor
    outputs: _tensor_pb2.Tensor
    layout: FlattenLayout
    classes: _containers.RepeatedScalarFieldContainer[int]
    dense_kernel: _tensor_pb2.Tensor
    dense_layer: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., flattened: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., source: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., outputs: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., layout: _Optional[_Union[FlattenLayout, _Mapping]] = ..., classes: _Optional[_Iterable[int]] = ..., dense_kernel: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., dense_layer: _Optional[str] = ...) -> None: ...

class FlattenLayout(_message.Message):
    __slots__ = ("layer_name", "data_format", "source_shape", "axis_names", "strides", "flat_size", "formula", "coordinates", "flat_order", "source_data_format", "note")
    LAYER_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    AXIS_NAMES_FIELD_NUMBER: _ClassVar[int]
    STRIDES_FIELD_NUMBER: _ClassVar[int]
    FLAT_SIZE_FIELD_NUMBER: _ClassVar[int]
    FORMULA_FIELD_NUMBER: _ClassVar[int]
    COORDINATES_FIELD_NUMBER: _ClassVar[int]
    FLAT_ORDER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_DATA_FORMAT_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    layer_name: str
    data_format: str
    source_shape: _containers.RepeatedScalarFieldContainer[int]
    axis_names: _containers.RepeatedScalarFieldContainer[str]
    strides: _containers.RepeatedScalarFieldContainer[int]
    flat_size: int
    formula: str
    coordinates: _containers.RepeatedCompositeFieldContainer[Coordinate]
    flat_order: _containers.RepeatedScalarFieldContainer[str]
    source_data_format: str
    note: str
    def __init__(self, layer_name: _Optional[str] = ..., data_format: _Optional[str] = ..., source_shape: _Optional[_Iterable[int]] = ..., axis_names: _Optional[_Iterable[str]] = ..., strides: _Optional[_Iterable[int]] = ..., flat_size: _Optional[int] = ..., formula: _Optional[str] = ..., coordinates: _Optional[_Iterable[_Union[Coordinate, _Mapping]]] = ..., flat_order: _Optional[_Iterable[str]] = ..., source_data_format: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class Coordinate(_message.Message):
    __slots__ = ("flat_index", "source_index")
    FLAT_INDEX_FIELD_NUMBER: _ClassVar[int]
    SOURCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    flat_index: int
    source_index: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, flat_index: _Optional[int] = ..., source_index: _Optional[_Iterable[int]] = ...) -> None: ...

class GetModelMetadataRequest(_message.Message):
    __slots__ = ("model_name",)
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    def __init__(self, model_name: _Optional[str] = ...) -> None: ...

class GetModelMetadataResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "backend", "device", "inputs", "outputs", "layers", "total_params", "trainable_params", "non_trainable_params", "flatten_layers", "max_batch_size", "source")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PARAMS_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_PARAMS_FIELD_NUMBER: _ClassVar[int]
    NON_TRAINABLE_PARAMS_FIELD_NUMBER: _ClassVar[int]
    FLATTEN_LAYERS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    backend: str
    device: str
    inputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    layers: _containers.RepeatedCompositeFieldContainer[LayerInfo]
    total_params: int
    trainable_params: int
    non_trainable_params: int
    flatten_layers: _containers.RepeatedScalarFieldContainer[str]
    max_batch_size: int
    source: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., layers: _Optional[_Iterable[_Union[LayerInfo, _Mapping]]] = ..., total_params: _Optional[int] = ..., trainable_params: _Optional[int] = ..., non_trainable_params: _Optional[int] = ..., flatten_layers: _Optional[_Iterable[str]] = ..., max_batch_size: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class LayerInfo(_message.Message):
    __slots__ = ("name", "type", "output_shape", "param_count", "data_format")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    PARAM_COUNT_FIELD_NUMBER: _ClassVar[int]
    DATA_FORMAT_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    output_shape: _containers.RepeatedScalarFieldContainer[int]
    param_count: int
    data_format: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., output_shape: _Optional[_Iterable[int]] = ..., param_count: _Optional[int] = ..., data_format: _Optional[str] = ...) -> None: ...
