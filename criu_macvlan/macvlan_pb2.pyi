from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class macvlan_addr(_message.Message):
    __slots__ = ["address", "broadcast", "family", "flags", "label", "peer", "preferred_lft", "prefixlen", "rt_priority", "scope", "valid_lft"]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BROADCAST_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_LFT_FIELD_NUMBER: _ClassVar[int]
    PREFIXLEN_FIELD_NUMBER: _ClassVar[int]
    RT_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    VALID_LFT_FIELD_NUMBER: _ClassVar[int]
    address: bytes
    broadcast: bytes
    family: int
    flags: int
    label: str
    peer: bytes
    preferred_lft: int
    prefixlen: int
    rt_priority: int
    scope: int
    valid_lft: int
    def __init__(self, family: _Optional[int] = ..., address: _Optional[bytes] = ..., prefixlen: _Optional[int] = ..., scope: _Optional[int] = ..., flags: _Optional[int] = ..., broadcast: _Optional[bytes] = ..., label: _Optional[str] = ..., valid_lft: _Optional[int] = ..., preferred_lft: _Optional[int] = ..., peer: _Optional[bytes] = ..., rt_priority: _Optional[int] = ...) -> None: ...

class macvlan_head(_message.Message):
    __slots__ = ["empty_ns", "hostname", "n_links", "netns_inode", "version"]
    EMPTY_NS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    NETNS_INODE_FIELD_NUMBER: _ClassVar[int]
    N_LINKS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    empty_ns: bool
    hostname: str
    n_links: int
    netns_inode: int
    version: int
    def __init__(self, version: _Optional[int] = ..., n_links: _Optional[int] = ..., empty_ns: bool = ..., hostname: _Optional[str] = ..., netns_inode: _Optional[int] = ...) -> None: ...

class macvlan_link(_message.Message):
    __slots__ = ["address", "addrs", "bc_cutoff", "bc_queue_len", "flags", "ifindex", "link_flags", "mode", "mtu", "name", "netns_id", "parent", "routes", "source_macs", "txqlen"]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ADDRS_FIELD_NUMBER: _ClassVar[int]
    BC_CUTOFF_FIELD_NUMBER: _ClassVar[int]
    BC_QUEUE_LEN_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    IFINDEX_FIELD_NUMBER: _ClassVar[int]
    LINK_FLAGS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NETNS_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_MACS_FIELD_NUMBER: _ClassVar[int]
    TXQLEN_FIELD_NUMBER: _ClassVar[int]
    address: bytes
    addrs: _containers.RepeatedCompositeFieldContainer[macvlan_addr]
    bc_cutoff: int
    bc_queue_len: int
    flags: int
    ifindex: int
    link_flags: int
    mode: int
    mtu: int
    name: str
    netns_id: int
    parent: macvlan_parent
    routes: _containers.RepeatedCompositeFieldContainer[macvlan_route]
    source_macs: _containers.RepeatedScalarFieldContainer[bytes]
    txqlen: int
    def __init__(self, name: _Optional[str] = ..., ifindex: _Optional[int] = ..., mode: _Optional[int] = ..., flags: _Optional[int] = ..., address: _Optional[bytes] = ..., mtu: _Optional[int] = ..., link_flags: _Optional[int] = ..., txqlen: _Optional[int] = ..., bc_queue_len: _Optional[int] = ..., bc_cutoff: _Optional[int] = ..., source_macs: _Optional[_Iterable[bytes]] = ..., parent: _Optional[_Union[macvlan_parent, _Mapping]] = ..., netns_id: _Optional[int] = ..., addrs: _Optional[_Iterable[_Union[macvlan_addr, _Mapping]]] = ..., routes: _Optional[_Iterable[_Union[macvlan_route, _Mapping]]] = ...) -> None: ...

class macvlan_parent(_message.Message):
    __slots__ = ["address", "ifindex", "link_netnsid", "mtu", "name"]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    IFINDEX_FIELD_NUMBER: _ClassVar[int]
    LINK_NETNSID_FIELD_NUMBER: _ClassVar[int]
    MTU_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    address: bytes
    ifindex: int
    link_netnsid: int
    mtu: int
    name: str
    def __init__(self, ifindex: _Optional[int] = ..., link_netnsid: _Optional[int] = ..., name: _Optional[str] = ..., address: _Optional[bytes] = ..., mtu: _Optional[int] = ...) -> None: ...

class macvlan_route(_message.Message):
    __slots__ = ["dst", "dst_len", "family", "gateway", "prefsrc", "priority", "protocol", "scope", "table", "type"]
    DST_FIELD_NUMBER: _ClassVar[int]
    DST_LEN_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    PREFSRC_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    dst: bytes
    dst_len: int
    family: int
    gateway: bytes
    prefsrc: bytes
    priority: int
    protocol: int
    scope: int
    table: int
    type: int
    def __init__(self, family: _Optional[int] = ..., dst_len: _Optional[int] = ..., dst: _Optional[bytes] = ..., gateway: _Optional[bytes] = ..., priority: _Optional[int] = ..., table: _Optional[int] = ..., scope: _Optional[int] = ..., protocol: _Optional[int] = ..., prefsrc: _Optional[bytes] = ..., type: _Optional[int] = ...) -> None: ...
