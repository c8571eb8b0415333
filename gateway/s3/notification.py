"""Bucket notifications: the ``?notification`` configuration document and event routing.

Pure: no I/O. :func:`parse_config` validates a PutBucketNotificationConfiguration body and
returns its rules, :func:`render_config` gives the normalised document that is stored and
that GetBucketNotificationConfiguration answers, and :func:`matching_rules` picks the rules
an event is delivered under.

Strata publishes events to **Kafka**, so only ``TopicConfiguration`` elements are accepted.
The Kafka topic is the last field of the ``Topic`` ARN: ``arn:aws:sns:us-east-1:123:photos``
publishes to the Kafka topic ``photos`` (region and account are kept in the document but not
interpreted; any partition, and ``sns`` as the service, are required). A topic name follows
Kafka's rule: 1-249 characters of ``[A-Za-z0-9._-]``, not ``.`` or ``..``.

A rule has

* ``Id`` (optional, at most 255 characters; when absent a stable one is derived from the
  rule, so storing the same document twice gives the same ids),
* one or more ``Event`` values from S3's event type list; ``s3:ObjectCreated:*`` style
  wildcards match every event of that family,
* an optional ``Filter``/``S3Key`` with at most one ``prefix`` and one ``suffix``
  ``FilterRule`` (names case-insensitive, answered as ``Prefix`` / ``Suffix``; values at most
  1024 characters), matched against the object key as stored (not URL-encoded).

Validation follows S3: an unparseable document, an unknown element, a rule without
``Topic`` or ``Event`` is ``MalformedXML``; an unknown event type, a malformed ARN or topic
name, a bad filter rule, duplicate ids and *overlapping* rules are ``InvalidArgument``. Two
rules overlap when they share an event type (after wildcards) and both their prefixes and
their suffixes overlap (one is a prefix / suffix of the other, or is absent), because S3 would
not know which destination owns such an event. ``QueueConfiguration``,
``CloudFunctionConfiguration`` and ``EventBridgeConfiguration`` are ``NotImplemented``. An
empty ``<NotificationConfiguration/>`` removes the configuration, as in S3 (the bucket's
events then go to the default topic again).
"""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.s3.errors import S3Error
from gateway.s3.xml import Node, document, parse

MAX_DOCUMENT = 64 * 1024
MAX_RULES = 100
MAX_ID = 255
MAX_FILTER_VALUE = 1024
BAD_ARN = "The ARN is not well formed"
OVERLAP = "Configurations overlap. Configurations on the same bucket cannot share a common event type."

# S3's notification event types (S3 User Guide, "Supported event types"). Strata emits the
# ObjectCreated and ObjectRemoved families; the others are accepted and never fire.
EVENT_TYPES = frozenset(
    {
        "s3:ObjectCreated:*", "s3:ObjectCreated:Put", "s3:ObjectCreated:Post", "s3:ObjectCreated:Copy",
        "s3:ObjectCreated:CompleteMultipartUpload",
        "s3:ObjectRemoved:*", "s3:ObjectRemoved:Delete", "s3:ObjectRemoved:DeleteMarkerCreated",
        "s3:ObjectRestore:*", "s3:ObjectRestore:Post", "s3:ObjectRestore:Completed",
        "s3:ObjectRestore:Delete",
        "s3:ReducedRedundancyLostObject",
        "s3:Replication:*", "s3:Replication:OperationFailedReplication",
        "s3:Replication:OperationMissedThreshold", "s3:Replication:OperationReplicatedAfterThreshold",
        "s3:Replication:OperationNotTracked",
        "s3:LifecycleExpiration:*", "s3:LifecycleExpiration:Delete",
        "s3:LifecycleExpiration:DeleteMarkerCreated",
        "s3:LifecycleTransition", "s3:IntelligentTiering",
        "s3:ObjectTagging:*", "s3:ObjectTagging:Put", "s3:ObjectTagging:Delete",
        "s3:ObjectAcl:Put",
    }
)  # fmt: skip

_UNSUPPORTED_DESTINATIONS = frozenset(
    {"QueueConfiguration", "CloudFunctionConfiguration", "EventBridgeConfiguration"}
)
_RULE_CHILDREN = frozenset({"Id", "Topic", "Event", "Filter"})
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_ARN = re.compile(r"arn:[a-z0-9-]+:sns:[^:]*:[^:]*:(?P<topic>[^:]+)")


def topic_from_arn(arn: str) -> str:
    """The Kafka topic named by a ``Topic`` ARN (its last field), or ``InvalidArgument``."""
    m = _ARN.fullmatch(arn)
    if m is None:
        raise S3Error("InvalidArgument", BAD_ARN, ArgumentName="Topic", ArgumentValue=arn)
    topic = m.group("topic")
    if not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
        raise S3Error(
            "InvalidArgument",
            "The topic name must be 1-249 characters of A-Z a-z 0-9 . _ - (a Kafka topic name)",
            ArgumentName="Topic",
            ArgumentValue=arn,
        )
    return topic


def event_matches(pattern: str, event_name: str) -> bool:
    """Does a configured event type (``s3:ObjectCreated:*``) cover ``event_name`` as events
    carry it (``ObjectCreated:Put``, no ``s3:`` prefix)?"""
    pattern = pattern.removeprefix("s3:")
    if pattern.endswith(":*"):
        return event_name.startswith(pattern[:-1])
    return pattern == event_name


def _events_overlap(a: str, b: str) -> bool:
    return event_matches(a, b.removeprefix("s3:")) or event_matches(b, a.removeprefix("s3:"))


@dataclass(frozen=True)
class TopicRule:
    """One ``TopicConfiguration``: which events, for which keys, go to which topic."""

    id: str
    topic_arn: str
    events: tuple[str, ...]
    prefix: str | None = None
    suffix: str | None = None

    @property
    def topic(self) -> str:
        return topic_from_arn(self.topic_arn)

    def matches(self, event_name: str, key: str) -> bool:
        return (
            any(event_matches(p, event_name) for p in self.events)
            and (self.prefix is None or key.startswith(self.prefix))
            and (self.suffix is None or key.endswith(self.suffix))
        )

    def overlaps(self, other: TopicRule) -> bool:
        """S3's overlap rule: a shared event type and overlapping prefix and suffix filters."""
        shared = any(_events_overlap(a, b) for a in self.events for b in other.events)
        p1, p2, s1, s2 = self.prefix or "", other.prefix or "", self.suffix or "", other.suffix or ""
        prefixes = p1.startswith(p2) or p2.startswith(p1)
        suffixes = s1.endswith(s2) or s2.endswith(s1)
        return shared and prefixes and suffixes

    def to_node(self) -> Node:
        children: list[Node] = [("Id", self.id), ("Topic", self.topic_arn)]
        children.extend(("Event", e) for e in self.events)
        filters: list[Node] = [
            ("FilterRule", [("Name", name), ("Value", value)])
            for name, value in (("Prefix", self.prefix), ("Suffix", self.suffix))
            if value is not None
        ]
        if filters:
            children.append(("Filter", [("S3Key", filters)]))
        return ("TopicConfiguration", children)


def _derived_id(arn: str, events: Sequence[str], prefix: str | None, suffix: str | None) -> str:
    """A stable id for a rule sent without one (S3 invents a random one)."""
    digest = hashlib.sha256("\0".join([arn, *events, prefix or "\1", suffix or "\1"]).encode())
    return "strata-" + digest.hexdigest()[:24]


# --------------------------------------------------------------------------- the document


def _text(el: ET.Element) -> str:
    if len(el):  # an element where text was expected
        raise S3Error("MalformedXML")
    return (el.text or "").strip()


def _parse_filter(el: ET.Element) -> tuple[str | None, str | None]:
    if len(el) != 1 or el[0].tag != "S3Key" or _text_outside(el) or _text_outside(el[0]):
        raise S3Error("MalformedXML")
    found: dict[str, str] = {}
    for rule in el[0]:
        if rule.tag != "FilterRule":
            raise S3Error("MalformedXML")
        fields: dict[str, str] = {}
        for child in rule:
            if child.tag not in ("Name", "Value") or child.tag in fields:
                raise S3Error("MalformedXML")
            fields[child.tag] = _text(child) if child.tag == "Name" else _raw_text(child)
        if "Name" not in fields or "Value" not in fields:
            raise S3Error("MalformedXML")
        name = fields["Name"].lower()
        if name not in ("prefix", "suffix"):
            raise S3Error(
                "InvalidArgument",
                "filter rule name must be either prefix or suffix",
                ArgumentName="FilterRule",
                ArgumentValue=fields["Name"],
            )
        if name in found:
            raise S3Error(
                "InvalidArgument",
                f"Cannot specify more than one {name} rule in a filter.",
                ArgumentName="FilterRule",
                ArgumentValue=name,
            )
        if len(fields["Value"]) > MAX_FILTER_VALUE:
            raise S3Error(
                "InvalidArgument",
                f"The {name} filter value must be at most {MAX_FILTER_VALUE} characters.",
                ArgumentName="FilterRule",
                ArgumentValue=name,
            )
        found[name] = fields["Value"]
    return found.get("prefix") or None, found.get("suffix") or None


def _raw_text(el: ET.Element) -> str:
    """Element text kept exactly (filter values may start or end with spaces, like keys)."""
    if len(el):
        raise S3Error("MalformedXML")
    return el.text or ""


def _text_outside(el: ET.Element) -> bool:
    """Stray text directly inside a container element (or after its children)."""
    return bool((el.text or "").strip()) or any((child.tail or "").strip() for child in el)


def _parse_rule(el: ET.Element) -> TopicRule:
    values: dict[str, list[ET.Element]] = {name: [] for name in _RULE_CHILDREN}
    for child in el:
        if child.tag not in _RULE_CHILDREN:
            raise S3Error("MalformedXML")
        values[child.tag].append(child)
    if _text_outside(el):
        raise S3Error("MalformedXML")
    if len(values["Topic"]) != 1 or not values["Event"] or len(values["Id"]) > 1 or len(values["Filter"]) > 1:
        raise S3Error("MalformedXML")
    arn = _text(values["Topic"][0])
    topic_from_arn(arn)
    events: list[str] = []
    for event_el in values["Event"]:
        event = _text(event_el)
        if event not in EVENT_TYPES:
            raise S3Error(
                "InvalidArgument",
                "The event is not supported for notifications",
                ArgumentName="Event",
                ArgumentValue=event,
            )
        if event not in events:
            events.append(event)
    prefix, suffix = _parse_filter(values["Filter"][0]) if values["Filter"] else (None, None)
    rule_id = _text(values["Id"][0]) if values["Id"] else ""
    if len(rule_id) > MAX_ID:
        raise S3Error("InvalidArgument", "The Id of a configuration must be no more than 255 characters.")
    return TopicRule(
        id=rule_id or _derived_id(arn, events, prefix, suffix),
        topic_arn=arn,
        events=tuple(events),
        prefix=prefix,
        suffix=suffix,
    )


def parse_config(body: bytes) -> tuple[TopicRule, ...]:
    """Validate a ``NotificationConfiguration`` document; an empty one gives no rules."""
    if len(body) > MAX_DOCUMENT:
        raise S3Error("MalformedXML", "The XML you provided was too large.")
    root = parse(body)
    if root.tag != "NotificationConfiguration" or _text_outside(root):
        raise S3Error("MalformedXML")
    rules: list[TopicRule] = []
    for child in root:
        if child.tag in _UNSUPPORTED_DESTINATIONS:
            raise S3Error("NotImplemented", f"{child.tag}: Strata publishes to Kafka topics only.")
        if child.tag != "TopicConfiguration":
            raise S3Error("MalformedXML")
        rules.append(_parse_rule(child))
    if len(rules) > MAX_RULES:
        raise S3Error("InvalidArgument", f"At most {MAX_RULES} notification configurations are allowed.")
    for i, rule in enumerate(rules):
        for other in rules[:i]:
            if rule.id == other.id:
                raise S3Error(
                    "InvalidArgument", "Ids must be unique.", ArgumentName="Id", ArgumentValue=rule.id
                )
            if rule.overlaps(other):
                raise S3Error("InvalidArgument", OVERLAP)
    return tuple(rules)


def render_config(rules: Sequence[TopicRule]) -> bytes:
    """The normalised document (what is stored, and what the Get operation answers)."""
    return document("NotificationConfiguration", [r.to_node() for r in rules])


# --------------------------------------------------------------------------- routing


def matching_rules(rules: Sequence[TopicRule], event_name: str, key: str) -> list[TopicRule]:
    """The rules an event is published under (at most one per event, since rules may not
    overlap; a list so that callers need not rely on that)."""
    return [rule for rule in rules if rule.matches(event_name, key)]
