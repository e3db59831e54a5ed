from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Chunk(_message.Message):
    __slots__ = ("digest", "size", "data", "zeros", "digest_last")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ZEROS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_LAST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    data: bytes
    zeros: int
    digest_last: bool
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., data: _Optional[bytes] = ..., zeros: _Optional[int] = ..., digest_last: bool = ...) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("digest", "size")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("accepted", "detail", "retry")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    detail: str
    retry: bool
    def __init__(self, accepted: bool = ..., detail: _Optional[str] = ..., retry: bool = ...) -> None: ...

class StepsFinishedRequest(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[StepFinishedRequest]
    def __init__(self, reports: _Optional[_Iterable[_Union[StepFinishedRequest, _Mapping]]] = ...) -> None: ...

class StepsFinishedResponse(_message.Message):
    __slots__ = ("acks",)
    ACKS_FIELD_NUMBER: _ClassVar[int]
    acks: _containers.RepeatedCompositeFieldContainer[Ack]
    def __init__(self, acks: _Optional[_Iterable[_Union[Ack, _Mapping]]] = ...) -> None: ...

class Gpu(_message.Message):
    __slots__ = ("index", "uuid", "model", "memory_bytes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    model: str
    memory_bytes: int
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., model: _Optional[str] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("cpu_millis", "memory_bytes", "gpus")
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    cpu_millis: int
    memory_bytes: int
    gpus: int
    def __init__(self, cpu_millis: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., gpus: _Optional[int] = ...) -> None: ...

class CreateProjectRequest(_message.Message):
    __slots__ = ("name", "owner")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    name: str
    owner: str
    def __init__(self, name: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class ProjectMember(_message.Message):
    __slots__ = ("user", "role")
    USER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    user: str
    role: str
    def __init__(self, user: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class ProjectView(_message.Message):
    __slots__ = ("name", "members", "created_by", "created_ms", "caller_role")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    CALLER_ROLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    members: _containers.RepeatedCompositeFieldContainer[ProjectMember]
    created_by: str
    created_ms: int
    caller_role: str
    def __init__(self, name: _Optional[str] = ..., members: _Optional[_Iterable[_Union[ProjectMember, _Mapping]]] = ..., created_by: _Optional[str] = ..., created_ms: _Optional[int] = ..., caller_role: _Optional[str] = ...) -> None: ...

class ListProjectsRequest(_message.Message):
    __slots__ = ("stale",)
    STALE_FIELD_NUMBER: _ClassVar[int]
    stale: bool
    def __init__(self, stale: bool = ...) -> None: ...

class ListProjectsResponse(_message.Message):
    __slots__ = ("projects",)
    PROJECTS_FIELD_NUMBER: _ClassVar[int]
    projects: _containers.RepeatedCompositeFieldContainer[ProjectView]
    def __init__(self, projects: _Optional[_Iterable[_Union[ProjectView, _Mapping]]] = ...) -> None: ...

class SetProjectMemberRequest(_message.Message):
    __slots__ = ("project", "user", "role")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    project: str
    user: str
    role: str
    def __init__(self, project: _Optional[str] = ..., user: _Optional[str] = ..., role: _Optional[str] = ...) -> None: ...

class ListAdminsRequest(_message.Message):
    __slots__ = ("stale",)
    STALE_FIELD_NUMBER: _ClassVar[int]
    stale: bool
    def __init__(self, stale: bool = ...) -> None: ...

class AdminView(_message.Message):
    __slots__ = ("name", "configured")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_FIELD_NUMBER: _ClassVar[int]
    name: str
    configured: bool
    def __init__(self, name: _Optional[str] = ..., configured: bool = ...) -> None: ...

class ListAdminsResponse(_message.Message):
    __slots__ = ("admins",)
    ADMINS_FIELD_NUMBER: _ClassVar[int]
    admins: _containers.RepeatedCompositeFieldContainer[AdminView]
    def __init__(self, admins: _Optional[_Iterable[_Union[AdminView, _Mapping]]] = ...) -> None: ...

class SetAdminRequest(_message.Message):
    __slots__ = ("user", "admin")
    USER_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    user: str
    admin: bool
    def __init__(self, user: _Optional[str] = ..., admin: bool = ...) -> None: ...

class SetGroupMemberRequest(_message.Message):
    __slots__ = ("group", "user", "member")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    group: str
    user: str
    member: bool
    def __init__(self, group: _Optional[str] = ..., user: _Optional[str] = ..., member: bool = ...) -> None: ...

class DeleteGroupRequest(_message.Message):
    __slots__ = ("group",)
    GROUP_FIELD_NUMBER: _ClassVar[int]
    group: str
    def __init__(self, group: _Optional[str] = ...) -> None: ...

class ListGroupsRequest(_message.Message):
    __slots__ = ("stale",)
    STALE_FIELD_NUMBER: _ClassVar[int]
    stale: bool
    def __init__(self, stale: bool = ...) -> None: ...

class GroupView(_message.Message):
    __slots__ = ("name", "users")
    NAME_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    users: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., users: _Optional[_Iterable[str]] = ...) -> None: ...

class ListGroupsResponse(_message.Message):
    __slots__ = ("groups",)
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[GroupView]
    def __init__(self, groups: _Optional[_Iterable[_Union[GroupView, _Mapping]]] = ...) -> None: ...

class RevokeCertificateRequest(_message.Message):
    __slots__ = ("serial", "name")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    serial: str
    name: str
    def __init__(self, serial: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class RevokeCertificateResponse(_message.Message):
    __slots__ = ("revoked", "already")
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_FIELD_NUMBER: _ClassVar[int]
    revoked: RevocationView
    already: bool
    def __init__(self, revoked: _Optional[_Union[RevocationView, _Mapping]] = ..., already: bool = ...) -> None: ...

class ListRevocationsRequest(_message.Message):
    __slots__ = ("stale",)
    STALE_FIELD_NUMBER: _ClassVar[int]
    stale: bool
    def __init__(self, stale: bool = ...) -> None: ...

class RevocationView(_message.Message):
    __slots__ = ("kind", "value", "revoked_by", "revoked_ms")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_MS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    value: str
    revoked_by: str
    revoked_ms: int
    def __init__(self, kind: _Optional[str] = ..., value: _Optional[str] = ..., revoked_by: _Optional[str] = ..., revoked_ms: _Optional[int] = ...) -> None: ...

class ListRevocationsResponse(_message.Message):
    __slots__ = ("revocations",)
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    revocations: _containers.RepeatedCompositeFieldContainer[RevocationView]
    def __init__(self, revocations: _Optional[_Iterable[_Union[RevocationView, _Mapping]]] = ...) -> None: ...

class SetSecretRequest(_message.Message):
    __slots__ = ("project", "name", "value")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    project: str
    name: str
    value: bytes
    def __init__(self, project: _Optional[str] = ..., name: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class SecretView(_message.Message):
    __slots__ = ("project", "name", "version", "set_by", "set_ms", "key_id")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SET_BY_FIELD_NUMBER: _ClassVar[int]
    SET_MS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    project: str
    name: str
    version: int
    set_by: str
    set_ms: int
    key_id: str
    def __init__(self, project: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., set_by: _Optional[str] = ..., set_ms: _Optional[int] = ..., key_id: _Optional[str] = ...) -> None: ...

class ListSecretsRequest(_message.Message):
    __slots__ = ("project", "stale")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    project: str
    stale: bool
    def __init__(self, project: _Optional[str] = ..., stale: bool = ...) -> None: ...

class ListSecretsResponse(_message.Message):
    __slots__ = ("secrets",)
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    secrets: _containers.RepeatedCompositeFieldContainer[SecretView]
    def __init__(self, secrets: _Optional[_Iterable[_Union[SecretView, _Mapping]]] = ...) -> None: ...

class DeleteSecretRequest(_message.Message):
    __slots__ = ("project", "name")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    project: str
    name: str
    def __init__(self, project: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class RotateSecretsKeyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RotateSecretsKeyResponse(_message.Message):
    __slots__ = ("key_id", "resealed")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    RESEALED_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    resealed: int
    def __init__(self, key_id: _Optional[str] = ..., resealed: _Optional[int] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("since_ms", "user", "project", "limit", "stale")
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    since_ms: int
    user: str
    project: str
    limit: int
    stale: bool
    def __init__(self, since_ms: _Optional[int] = ..., user: _Optional[str] = ..., project: _Optional[str] = ..., limit: _Optional[int] = ..., stale: bool = ...) -> None: ...

class AuditRecordView(_message.Message):
    __slots__ = ("seq", "time_ms", "caller", "role", "project", "action", "summary", "outcome", "detail")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time_ms: int
    caller: str
    role: str
    project: str
    action: str
    summary: str
    outcome: str
    detail: str
    def __init__(self, seq: _Optional[int] = ..., time_ms: _Optional[int] = ..., caller: _Optional[str] = ..., role: _Optional[str] = ..., project: _Optional[str] = ..., action: _Optional[str] = ..., summary: _Optional[str] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("records", "matched", "dropped")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecordView]
    matched: int
    dropped: int
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecordView, _Mapping]]] = ..., matched: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class RerunRunRequest(_message.Message):
    __slots__ = ("run_id", "request_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    request_id: str
    def __init__(self, run_id: _Optional[int] = ..., request_id: _Optional[str] = ..., **kwargs) -> None: ...

class LineageRequest(_message.Message):
    __slots__ = ("digest", "stale")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    stale: bool
    def __init__(self, digest: _Optional[str] = ..., stale: bool = ...) -> None: ...

class LineageResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[LineageNode]
    def __init__(self, nodes: _Optional[_Iterable[_Union[LineageNode, _Mapping]]] = ...) -> None: ...

class LineageNode(_message.Message):
    __slots__ = ("digest", "name", "size", "run_id", "step", "attempt", "command", "bundle_digest", "code_digest", "params", "matrix", "inputs")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MatrixEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CODE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MATRIX_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    digest: str
    name: str
    size: int
    run_id: int
    step: str
    attempt: int
    command: _containers.RepeatedScalarFieldContainer[str]
    bundle_digest: str
    code_digest: str
    params: _containers.ScalarMap[str, str]
    matrix: _containers.ScalarMap[str, str]
    inputs: _containers.RepeatedCompositeFieldContainer[InputView]
    def __init__(self, digest: _Optional[str] = ..., name: _Optional[str] = ..., size: _Optional[int] = ..., run_id: _Optional[int] = ..., step: _Optional[str] = ..., attempt: _Optional[int] = ..., command: _Optional[_Iterable[str]] = ..., bundle_digest: _Optional[str] = ..., code_digest: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., matrix: _Optional[_Mapping[str, str]] = ..., inputs: _Optional[_Iterable[_Union[InputView, _Mapping]]] = ...) -> None: ...

class InputView(_message.Message):
    __slots__ = ("name", "digest", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    digest: str
    size: int
    def __init__(self, name: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class CreateScheduleRequest(_message.Message):
    __slots__ = ("name", "cron", "spec_yaml", "spec_file", "params", "bundle_digest")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    SPEC_FILE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    cron: str
    spec_yaml: str
    spec_file: str
    params: _containers.ScalarMap[str, str]
    bundle_digest: str
    def __init__(self, name: _Optional[str] = ..., cron: _Optional[str] = ..., spec_yaml: _Optional[str] = ..., spec_file: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., bundle_digest: _Optional[str] = ...) -> None: ...

class ScheduleView(_message.Message):
    __slots__ = ("name", "cron", "pipeline", "owner", "paused", "created_ms", "last_tick_ms", "last_run", "next_tick_ms", "fired", "missed", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CRON_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_TICK_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_FIELD_NUMBER: _ClassVar[int]
    NEXT_TICK_MS_FIELD_NUMBER: _ClassVar[int]
    FIRED_FIELD_NUMBER: _ClassVar[int]
    MISSED_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    cron: str
    pipeline: str
    owner: str
    paused: bool
    created_ms: int
    last_tick_ms: int
    last_run: int
    next_tick_ms: int
    fired: int
    missed: int
    params: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., cron: _Optional[str] = ..., pipeline: _Optional[str] = ..., owner: _Optional[str] = ..., paused: bool = ..., created_ms: _Optional[int] = ..., last_tick_ms: _Optional[int] = ..., last_run: _Optional[int] = ..., next_tick_ms: _Optional[int] = ..., fired: _Optional[int] = ..., missed: _Optional[int] = ..., params: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListSchedulesRequest(_message.Message):
    __slots__ = ("stale",)
    STALE_FIELD_NUMBER: _ClassVar[int]
    stale: bool
    def __init__(self, stale: bool = ...) -> None: ...

class ListSchedulesResponse(_message.Message):
    __slots__ = ("schedules",)
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[ScheduleView]
    def __init__(self, schedules: _Optional[_Iterable[_Union[ScheduleView, _Mapping]]] = ...) -> None: ...

class PauseScheduleRequest(_message.Message):
    __slots__ = ("name", "paused")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    name: str
    paused: bool
    def __init__(self, name: _Optional[str] = ..., paused: bool = ...) -> None: ...

class DeleteScheduleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PinArtifactRequest(_message.Message):
    __slots__ = ("digest", "tag")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    digest: str
    tag: str
    def __init__(self, digest: _Optional[str] = ..., tag: _Optional[str] = ...) -> None: ...

class UnpinArtifactRequest(_message.Message):
    __slots__ = ("tag",)
    TAG_FIELD_NUMBER: _ClassVar[int]
    tag: str
    def __init__(self, tag: _Optional[str] = ...) -> None: ...

class PinView(_message.Message):
    __slots__ = ("tag", "digest", "size", "owner", "created_ms")
    TAG_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    tag: str
    digest: str
    size: int
    owner: str
    created_ms: int
    def __init__(self, tag: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., owner: _Optional[str] = ..., created_ms: _Optional[int] = ...) -> None: ...

class ListPinsRequest(_message.Message):
    __slots__ = ("stale",)
    STALE_FIELD_NUMBER: _ClassVar[int]
    stale: bool
    def __init__(self, stale: bool = ...) -> None: ...

class ListPinsResponse(_message.Message):
    __slots__ = ("pins",)
    PINS_FIELD_NUMBER: _ClassVar[int]
    pins: _containers.RepeatedCompositeFieldContainer[PinView]
    def __init__(self, pins: _Optional[_Iterable[_Union[PinView, _Mapping]]] = ...) -> None: ...

class CollectGarbageRequest(_message.Message):
    __slots__ = ("keep_last", "dry_run")
    KEEP_LAST_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    keep_last: int
    dry_run: bool
    def __init__(self, keep_last: _Optional[int] = ..., dry_run: bool = ...) -> None: ...

class CollectGarbageResponse(_message.Message):
    __slots__ = ("runs", "blobs", "bytes", "runs_kept", "recent_blobs", "recent_bytes", "grace_ms")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    RUNS_KEPT_FIELD_NUMBER: _ClassVar[int]
    RECENT_BLOBS_FIELD_NUMBER: _ClassVar[int]
    RECENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    GRACE_MS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedScalarFieldContainer[int]
    blobs: int
    bytes: int
    runs_kept: int
    recent_blobs: int
    recent_bytes: int
    grace_ms: int
    def __init__(self, runs: _Optional[_Iterable[int]] = ..., blobs: _Optional[int] = ..., bytes: _Optional[int] = ..., runs_kept: _Optional[int] = ..., recent_blobs: _Optional[int] = ..., recent_bytes: _Optional[int] = ..., grace_ms: _Optional[int] = ...) -> None: ...

class HasBlobResponse(_message.Message):
    __slots__ = ("present",)
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    present: bool
    def __init__(self, present: bool = ...) -> None: ...

class GetLimitsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LimitsView(_message.Message):
    __slots__ = ("max_spec_bytes", "max_steps", "max_trials_per_step", "max_expanded_bytes")
    MAX_SPEC_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_TRIALS_PER_STEP_FIELD_NUMBER: _ClassVar[int]
    MAX_EXPANDED_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_spec_bytes: int
    max_steps: int
    max_trials_per_step: int
    max_expanded_bytes: int
    def __init__(self, max_spec_bytes: _Optional[int] = ..., max_steps: _Optional[int] = ..., max_trials_per_step: _Optional[int] = ..., max_expanded_bytes: _Optional[int] = ...) -> None: ...

class SubmitRunRequest(_message.Message):
    __slots__ = ("spec_yaml", "spec_file", "params", "bundle_digest", "request_id", "no_cache")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    SPEC_FILE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NO_CACHE_FIELD_NUMBER: _ClassVar[int]
    spec_yaml: str
    spec_file: str
    params: _containers.ScalarMap[str, str]
    bundle_digest: str
    request_id: str
    no_cache: bool
    def __init__(self, spec_yaml: _Optional[str] = ..., spec_file: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., bundle_digest: _Optional[str] = ..., request_id: _Optional[str] = ..., no_cache: bool = ...) -> None: ...

class SubmitRunResponse(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    def __init__(self, run_id: _Optional[int] = ...) -> None: ...

class SubmitRunsRequest(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[SubmitRunRequest]
    def __init__(self, runs: _Optional[_Iterable[_Union[SubmitRunRequest, _Mapping]]] = ...) -> None: ...

class SubmitRunsReply(_message.Message):
    __slots__ = ("answers",)
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[SubmitRunsAnswer]
    def __init__(self, answers: _Optional[_Iterable[_Union[SubmitRunsAnswer, _Mapping]]] = ...) -> None: ...

class SubmitRunsAnswer(_message.Message):
    __slots__ = ("index", "run_id", "code", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    run_id: int
    code: int
    message: str
    def __init__(self, index: _Optional[int] = ..., run_id: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("stale", "where", "limit")
    STALE_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    stale: bool
    where: str
    limit: int
    def __init__(self, stale: bool = ..., where: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "matched", "omitted")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    OMITTED_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunSummary]
    matched: int
    omitted: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunSummary, _Mapping]]] = ..., matched: _Optional[int] = ..., omitted: _Optional[_Iterable[int]] = ...) -> None: ...

class RunSummary(_message.Message):
    __slots__ = ("run_id", "pipeline", "state", "submitter", "submitted_ms", "finished_ms", "steps_total", "steps_done", "reason", "priority", "project", "rerun_of", "schedule", "schedule_tick_ms", "collected", "params", "metrics", "steps_cached")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_MS_FIELD_NUMBER: _ClassVar[int]
    STEPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STEPS_DONE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    RERUN_OF_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_TICK_MS_FIELD_NUMBER: _ClassVar[int]
    COLLECTED_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    STEPS_CACHED_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    pipeline: str
    state: str
    submitter: str
    submitted_ms: int
    finished_ms: int
    steps_total: int
    steps_done: int
    reason: str
    priority: int
    project: str
    rerun_of: int
    schedule: str
    schedule_tick_ms: int
    collected: bool
    params: _containers.ScalarMap[str, str]
    metrics: _containers.ScalarMap[str, float]
    steps_cached: int
    def __init__(self, run_id: _Optional[int] = ..., pipeline: _Optional[str] = ..., state: _Optional[str] = ..., submitter: _Optional[str] = ..., submitted_ms: _Optional[int] = ..., finished_ms: _Optional[int] = ..., steps_total: _Optional[int] = ..., steps_done: _Optional[int] = ..., reason: _Optional[str] = ..., priority: _Optional[int] = ..., project: _Optional[str] = ..., rerun_of: _Optional[int] = ..., schedule: _Optional[str] = ..., schedule_tick_ms: _Optional[int] = ..., collected: bool = ..., params: _Optional[_Mapping[str, str]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., steps_cached: _Optional[int] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id", "stale", "metric_history", "step_offset", "step_limit", "step_state")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    METRIC_HISTORY_FIELD_NUMBER: _ClassVar[int]
    STEP_OFFSET_FIELD_NUMBER: _ClassVar[int]
    STEP_LIMIT_FIELD_NUMBER: _ClassVar[int]
    STEP_STATE_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    stale: bool
    metric_history: bool
    step_offset: int
    step_limit: int
    step_state: str
    def __init__(self, run_id: _Optional[int] = ..., stale: bool = ..., metric_history: bool = ..., step_offset: _Optional[int] = ..., step_limit: _Optional[int] = ..., step_state: _Optional[str] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    def __init__(self, run_id: _Optional[int] = ...) -> None: ...

class RunView(_message.Message):
    __slots__ = ("summary", "steps", "params", "bundle_digest", "trimmed", "step_counts", "steps_offset", "steps_matched")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class StepCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    TRIMMED_FIELD_NUMBER: _ClassVar[int]
    STEP_COUNTS_FIELD_NUMBER: _ClassVar[int]
    STEPS_OFFSET_FIELD_NUMBER: _ClassVar[int]
    STEPS_MATCHED_FIELD_NUMBER: _ClassVar[int]
    summary: RunSummary
    steps: _containers.RepeatedCompositeFieldContainer[StepView]
    params: _containers.ScalarMap[str, str]
    bundle_digest: str
    trimmed: str
    step_counts: _containers.ScalarMap[str, int]
    steps_offset: int
    steps_matched: int
    def __init__(self, summary: _Optional[_Union[RunSummary, _Mapping]] = ..., steps: _Optional[_Iterable[_Union[StepView, _Mapping]]] = ..., params: _Optional[_Mapping[str, str]] = ..., bundle_digest: _Optional[str] = ..., trimmed: _Optional[str] = ..., step_counts: _Optional[_Mapping[str, int]] = ..., steps_offset: _Optional[int] = ..., steps_matched: _Optional[int] = ...) -> None: ...

class StepView(_message.Message):
    __slots__ = ("name", "state", "attempt", "worker", "started_ms", "finished_ms", "has_exit_code", "exit_code", "reason", "needs", "attempts", "resources", "reused", "reused_run", "reused_step", "inputs", "cache_key", "trial_of", "matrix", "metrics")
    class MatrixEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_MS_FIELD_NUMBER: _ClassVar[int]
    HAS_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    NEEDS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    REUSED_RUN_FIELD_NUMBER: _ClassVar[int]
    REUSED_STEP_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_KEY_FIELD_NUMBER: _ClassVar[int]
    TRIAL_OF_FIELD_NUMBER: _ClassVar[int]
    MATRIX_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    attempt: int
    worker: str
    started_ms: int
    finished_ms: int
    has_exit_code: bool
    exit_code: int
    reason: str
    needs: _containers.RepeatedScalarFieldContainer[str]
    attempts: _containers.RepeatedCompositeFieldContainer[AttemptView]
    resources: Resources
    reused: str
    reused_run: int
    reused_step: str
    inputs: _containers.RepeatedCompositeFieldContainer[InputView]
    cache_key: str
    trial_of: str
    matrix: _containers.ScalarMap[str, str]
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., attempt: _Optional[int] = ..., worker: _Optional[str] = ..., started_ms: _Optional[int] = ..., finished_ms: _Optional[int] = ..., has_exit_code: bool = ..., exit_code: _Optional[int] = ..., reason: _Optional[str] = ..., needs: _Optional[_Iterable[str]] = ..., attempts: _Optional[_Iterable[_Union[AttemptView, _Mapping]]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., reused: _Optional[str] = ..., reused_run: _Optional[int] = ..., reused_step: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[InputView, _Mapping]]] = ..., cache_key: _Optional[str] = ..., trial_of: _Optional[str] = ..., matrix: _Optional[_Mapping[str, str]] = ..., metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ...) -> None: ...

class AttemptView(_message.Message):
    __slots__ = ("attempt", "worker", "outcome", "started_ms", "finished_ms", "has_exit_code", "exit_code", "reason", "gpus", "cpu_time_ms", "peak_memory_bytes", "metrics", "image_id", "image_repo_digest")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STARTED_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_MS_FIELD_NUMBER: _ClassVar[int]
    HAS_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    CPU_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_REPO_DIGEST_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    worker: str
    outcome: str
    started_ms: int
    finished_ms: int
    has_exit_code: bool
    exit_code: int
    reason: str
    gpus: _containers.RepeatedScalarFieldContainer[int]
    cpu_time_ms: int
    peak_memory_bytes: int
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    image_id: str
    image_repo_digest: str
    def __init__(self, attempt: _Optional[int] = ..., worker: _Optional[str] = ..., outcome: _Optional[str] = ..., started_ms: _Optional[int] = ..., finished_ms: _Optional[int] = ..., has_exit_code: bool = ..., exit_code: _Optional[int] = ..., reason: _Optional[str] = ..., gpus: _Optional[_Iterable[int]] = ..., cpu_time_ms: _Optional[int] = ..., peak_memory_bytes: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ..., image_id: _Optional[str] = ..., image_repo_digest: _Optional[str] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ("stale",)
    STALE_FIELD_NUMBER: _ClassVar[int]
    stale: bool
    def __init__(self, stale: bool = ...) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerView]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerView, _Mapping]]] = ...) -> None: ...

class WorkerView(_message.Message):
    __slots__ = ("name", "capacity", "in_use", "labels", "gpus", "last_heartbeat_ms", "connected", "running", "mode", "lost_ms")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    IN_USE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LOST_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    capacity: Resources
    in_use: Resources
    labels: _containers.ScalarMap[str, str]
    gpus: _containers.RepeatedCompositeFieldContainer[Gpu]
    last_heartbeat_ms: int
    connected: bool
    running: int
    mode: str
    lost_ms: int
    def __init__(self, name: _Optional[str] = ..., capacity: _Optional[_Union[Resources, _Mapping]] = ..., in_use: _Optional[_Union[Resources, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., gpus: _Optional[_Iterable[_Union[Gpu, _Mapping]]] = ..., last_heartbeat_ms: _Optional[int] = ..., connected: bool = ..., running: _Optional[int] = ..., mode: _Optional[str] = ..., lost_ms: _Optional[int] = ...) -> None: ...

class SetWorkerModeRequest(_message.Message):
    __slots__ = ("name", "mode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    mode: str
    def __init__(self, name: _Optional[str] = ..., mode: _Optional[str] = ...) -> None: ...

class StreamLogsRequest(_message.Message):
    __slots__ = ("run_id", "step", "follow")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    step: str
    follow: bool
    def __init__(self, run_id: _Optional[int] = ..., step: _Optional[str] = ..., follow: bool = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("run_id", "step", "attempt", "stream", "seq", "timestamp_ms", "text")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    step: str
    attempt: int
    stream: str
    seq: int
    timestamp_ms: int
    text: str
    def __init__(self, run_id: _Optional[int] = ..., step: _Optional[str] = ..., attempt: _Optional[int] = ..., stream: _Optional[str] = ..., seq: _Optional[int] = ..., timestamp_ms: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class ListArtifactsRequest(_message.Message):
    __slots__ = ("run_id", "stale")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    stale: bool
    def __init__(self, run_id: _Optional[int] = ..., stale: bool = ...) -> None: ...

class ListArtifactsResponse(_message.Message):
    __slots__ = ("artifacts",)
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    artifacts: _containers.RepeatedCompositeFieldContainer[ArtifactView]
    def __init__(self, artifacts: _Optional[_Iterable[_Union[ArtifactView, _Mapping]]] = ...) -> None: ...

class ArtifactView(_message.Message):
    __slots__ = ("step", "name", "digest", "size", "attempt")
    STEP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    step: str
    name: str
    digest: str
    size: int
    attempt: int
    def __init__(self, step: _Optional[str] = ..., name: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class DownloadArtifactRequest(_message.Message):
    __slots__ = ("run_id", "step", "name", "offset")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    step: str
    name: str
    offset: int
    def __init__(self, run_id: _Optional[int] = ..., step: _Optional[str] = ..., name: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClusterStatusResponse(_message.Message):
    __slots__ = ("leader_id", "members", "answered_by")
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    leader_id: int
    members: _containers.RepeatedCompositeFieldContainer[MemberStatus]
    answered_by: int
    def __init__(self, leader_id: _Optional[int] = ..., members: _Optional[_Iterable[_Union[MemberStatus, _Mapping]]] = ..., answered_by: _Optional[int] = ...) -> None: ...

class MemberStatus(_message.Message):
    __slots__ = ("id", "client_address", "peer_address", "role", "term", "commit_index", "applied_index", "lag", "last_contact_ms", "reachable", "error", "learner", "promotion")
    ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    LAST_CONTACT_MS_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LEARNER_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_FIELD_NUMBER: _ClassVar[int]
    id: int
    client_address: str
    peer_address: str
    role: str
    term: int
    commit_index: int
    applied_index: int
    lag: int
    last_contact_ms: int
    reachable: bool
    error: str
    learner: bool
    promotion: str
    def __init__(self, id: _Optional[int] = ..., client_address: _Optional[str] = ..., peer_address: _Optional[str] = ..., role: _Optional[str] = ..., term: _Optional[int] = ..., commit_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., lag: _Optional[int] = ..., last_contact_ms: _Optional[int] = ..., reachable: bool = ..., error: _Optional[str] = ..., learner: bool = ..., promotion: _Optional[str] = ...) -> None: ...

class AddMemberRequest(_message.Message):
    __slots__ = ("id", "client_address", "peer_address")
    ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    id: int
    client_address: str
    peer_address: str
    def __init__(self, id: _Optional[int] = ..., client_address: _Optional[str] = ..., peer_address: _Optional[str] = ...) -> None: ...

class RemoveMemberRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class BlobUrlsRequest(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, digests: _Optional[_Iterable[str]] = ...) -> None: ...

class BlobUrl(_message.Message):
    __slots__ = ("digest", "size", "url")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    digest: str
    size: int
    url: str
    def __init__(self, digest: _Optional[str] = ..., size: _Optional[int] = ..., url: _Optional[str] = ...) -> None: ...

class BlobUrlsResponse(_message.Message):
    __slots__ = ("direct", "urls", "expires_in_ms")
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    URLS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_MS_FIELD_NUMBER: _ClassVar[int]
    direct: bool
    urls: _containers.RepeatedCompositeFieldContainer[BlobUrl]
    expires_in_ms: int
    def __init__(self, direct: bool = ..., urls: _Optional[_Iterable[_Union[BlobUrl, _Mapping]]] = ..., expires_in_ms: _Optional[int] = ...) -> None: ...

class PrepareUploadRequest(_message.Message):
    __slots__ = ("attempt", "digest", "size", "upload_id", "first_part")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_PART_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    digest: str
    size: int
    upload_id: str
    first_part: int
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., upload_id: _Optional[str] = ..., first_part: _Optional[int] = ...) -> None: ...

class PrepareUploadResponse(_message.Message):
    __slots__ = ("direct", "stored", "url", "upload_id", "part_bytes", "part_urls", "expires_in_ms", "parts", "first_part")
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    PART_BYTES_FIELD_NUMBER: _ClassVar[int]
    PART_URLS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_MS_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    FIRST_PART_FIELD_NUMBER: _ClassVar[int]
    direct: bool
    stored: bool
    url: str
    upload_id: str
    part_bytes: int
    part_urls: _containers.RepeatedScalarFieldContainer[str]
    expires_in_ms: int
    parts: int
    first_part: int
    def __init__(self, direct: bool = ..., stored: bool = ..., url: _Optional[str] = ..., upload_id: _Optional[str] = ..., part_bytes: _Optional[int] = ..., part_urls: _Optional[_Iterable[str]] = ..., expires_in_ms: _Optional[int] = ..., parts: _Optional[int] = ..., first_part: _Optional[int] = ...) -> None: ...

class CompleteUploadRequest(_message.Message):
    __slots__ = ("attempt", "digest", "size", "upload_id", "part_etags", "abort")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    PART_ETAGS_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    digest: str
    size: int
    upload_id: str
    part_etags: _containers.RepeatedScalarFieldContainer[str]
    abort: bool
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., upload_id: _Optional[str] = ..., part_etags: _Optional[_Iterable[str]] = ..., abort: bool = ...) -> None: ...

class AttemptRef(_message.Message):
    __slots__ = ("run_id", "step", "attempt")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    step: str
    attempt: int
    def __init__(self, run_id: _Optional[int] = ..., step: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("name", "capacity", "labels", "gpus", "running", "container_runtime")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_RUNTIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    capacity: Resources
    labels: _containers.ScalarMap[str, str]
    gpus: _containers.RepeatedCompositeFieldContainer[Gpu]
    running: _containers.RepeatedCompositeFieldContainer[AttemptRef]
    container_runtime: str
    def __init__(self, name: _Optional[str] = ..., capacity: _Optional[_Union[Resources, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., gpus: _Optional[_Iterable[_Union[Gpu, _Mapping]]] = ..., running: _Optional[_Iterable[_Union[AttemptRef, _Mapping]]] = ..., container_runtime: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("session", "heartbeat_interval_ms")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    session: str
    heartbeat_interval_ms: int
    def __init__(self, session: _Optional[str] = ..., heartbeat_interval_ms: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("name", "session", "running")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    name: str
    session: str
    running: _containers.RepeatedCompositeFieldContainer[AttemptRef]
    def __init__(self, name: _Optional[str] = ..., session: _Optional[str] = ..., running: _Optional[_Iterable[_Union[AttemptRef, _Mapping]]] = ...) -> None: ...

class AssignmentsRequest(_message.Message):
    __slots__ = ("name", "session")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    session: str
    def __init__(self, name: _Optional[str] = ..., session: _Optional[str] = ...) -> None: ...

class WorkerMessage(_message.Message):
    __slots__ = ("assign", "cancel")
    ASSIGN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    assign: Assignment
    cancel: AttemptRef
    def __init__(self, assign: _Optional[_Union[Assignment, _Mapping]] = ..., cancel: _Optional[_Union[AttemptRef, _Mapping]] = ...) -> None: ...

class InputFile(_message.Message):
    __slots__ = ("name", "file_name", "digest", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    file_name: str
    digest: str
    size: int
    def __init__(self, name: _Optional[str] = ..., file_name: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("attempt", "command", "env", "bundle_digest", "inputs", "outputs", "resources", "gpu_indices", "timeout_ms", "pipeline", "gathers", "secrets", "container")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    GPU_INDICES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    GATHERS_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    bundle_digest: str
    inputs: _containers.RepeatedCompositeFieldContainer[InputFile]
    outputs: _containers.RepeatedScalarFieldContainer[str]
    resources: Resources
    gpu_indices: _containers.RepeatedScalarFieldContainer[int]
    timeout_ms: int
    pipeline: str
    gathers: _containers.RepeatedCompositeFieldContainer[GatherInput]
    secrets: _containers.RepeatedCompositeFieldContainer[SecretValue]
    container: ContainerSpec
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., bundle_digest: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[InputFile, _Mapping]]] = ..., outputs: _Optional[_Iterable[str]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., gpu_indices: _Optional[_Iterable[int]] = ..., timeout_ms: _Optional[int] = ..., pipeline: _Optional[str] = ..., gathers: _Optional[_Iterable[_Union[GatherInput, _Mapping]]] = ..., secrets: _Optional[_Iterable[_Union[SecretValue, _Mapping]]] = ..., container: _Optional[_Union[ContainerSpec, _Mapping]] = ...) -> None: ...

class ContainerSpec(_message.Message):
    __slots__ = ("image", "pull", "shm_size_bytes", "network", "read_only_root", "report_image")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PULL_FIELD_NUMBER: _ClassVar[int]
    SHM_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_ROOT_FIELD_NUMBER: _ClassVar[int]
    REPORT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: str
    pull: str
    shm_size_bytes: int
    network: str
    read_only_root: bool
    report_image: bool
    def __init__(self, image: _Optional[str] = ..., pull: _Optional[str] = ..., shm_size_bytes: _Optional[int] = ..., network: _Optional[str] = ..., read_only_root: bool = ..., report_image: bool = ...) -> None: ...

class SecretValue(_message.Message):
    __slots__ = ("name", "value", "env", "file", "error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: bytes
    env: str
    file: str
    error: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[bytes] = ..., env: _Optional[str] = ..., file: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class GatherInput(_message.Message):
    __slots__ = ("step", "files", "manifest_json", "best_trial")
    STEP_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    BEST_TRIAL_FIELD_NUMBER: _ClassVar[int]
    step: str
    files: _containers.RepeatedCompositeFieldContainer[InputFile]
    manifest_json: str
    best_trial: str
    def __init__(self, step: _Optional[str] = ..., files: _Optional[_Iterable[_Union[InputFile, _Mapping]]] = ..., manifest_json: _Optional[str] = ..., best_trial: _Optional[str] = ...) -> None: ...

class StepStartedRequest(_message.Message):
    __slots__ = ("attempt",)
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ...) -> None: ...

class ImageResolvedRequest(_message.Message):
    __slots__ = ("attempt", "image_id", "image_repo_digest")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_REPO_DIGEST_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    image_id: str
    image_repo_digest: str
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ..., image_id: _Optional[str] = ..., image_repo_digest: _Optional[str] = ...) -> None: ...

class ImageResolvedResponse(_message.Message):
    __slots__ = ("run", "reason")
    RUN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run: bool
    reason: str
    def __init__(self, run: bool = ..., reason: _Optional[str] = ...) -> None: ...

class LogBatch(_message.Message):
    __slots__ = ("attempt", "lines")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    lines: _containers.RepeatedCompositeFieldContainer[LogLine]
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ..., lines: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ...) -> None: ...

class OutputFile(_message.Message):
    __slots__ = ("name", "digest", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    digest: str
    size: int
    def __init__(self, name: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class StepFinishedRequest(_message.Message):
    __slots__ = ("attempt", "outcome", "has_exit_code", "exit_code", "reason", "outputs", "log", "cpu_time_ms", "peak_memory_bytes", "has_ran_ms", "ran_ms", "metrics", "image_id", "image_repo_digest")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    HAS_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    CPU_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    HAS_RAN_MS_FIELD_NUMBER: _ClassVar[int]
    RAN_MS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_REPO_DIGEST_FIELD_NUMBER: _ClassVar[int]
    attempt: AttemptRef
    outcome: str
    has_exit_code: bool
    exit_code: int
    reason: str
    outputs: _containers.RepeatedCompositeFieldContainer[OutputFile]
    log: BlobRef
    cpu_time_ms: int
    peak_memory_bytes: int
    has_ran_ms: bool
    ran_ms: int
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    image_id: str
    image_repo_digest: str
    def __init__(self, attempt: _Optional[_Union[AttemptRef, _Mapping]] = ..., outcome: _Optional[str] = ..., has_exit_code: bool = ..., exit_code: _Optional[int] = ..., reason: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[OutputFile, _Mapping]]] = ..., log: _Optional[_Union[BlobRef, _Mapping]] = ..., cpu_time_ms: _Optional[int] = ..., peak_memory_bytes: _Optional[int] = ..., has_ran_ms: bool = ..., ran_ms: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ..., image_id: _Optional[str] = ..., image_repo_digest: _Optional[str] = ...) -> None: ...

class Metric(_message.Message):
    __slots__ = ("name", "value", "has_step", "step", "count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    HAS_STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    has_step: bool
    step: int
    count: int
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., has_step: bool = ..., step: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class LiveWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[LiveWorker]
    def __init__(self, workers: _Optional[_Iterable[_Union[LiveWorker, _Mapping]]] = ...) -> None: ...

class LiveWorker(_message.Message):
    __slots__ = ("name", "connected", "last_heartbeat_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    connected: bool
    last_heartbeat_ms: int
    def __init__(self, name: _Optional[str] = ..., connected: bool = ..., last_heartbeat_ms: _Optional[int] = ...) -> None: ...

class RaftBatch(_message.Message):
    __slots__ = ("messages",)
    FROM_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, messages: _Optional[_Iterable[bytes]] = ..., **kwargs) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("data", "total_size")
    FROM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    total_size: int
    def __init__(self, data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., **kwargs) -> None: ...

class ForwardRequest(_message.Message):
    __slots__ = ("caller", "command", "resent", "request_id")
    CALLER_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    RESENT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    caller: str
    command: bytes
    resent: bool
    request_id: str
    def __init__(self, caller: _Optional[str] = ..., command: _Optional[bytes] = ..., resent: bool = ..., request_id: _Optional[str] = ...) -> None: ...

class ForwardResponse(_message.Message):
    __slots__ = ("outcome",)
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    outcome: bytes
    def __init__(self, outcome: _Optional[bytes] = ...) -> None: ...
