"""Saved conversations: one JSON file per chat under ``KVANT_HOME/chats``, written atomically."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.library import atomic_write_text
from engine.paths import KvantPaths

FORMAT_VERSION = 1
TITLE_CHARS = 60


def chats_dir(paths: KvantPaths) -> Path:
    return paths.home / "chats"


@dataclass
class Message:
    role: str  # "user" or "assistant"
    content: str
    stats: dict[str, Any] | None = None  # for answers: tokens, speed, finish reason

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.stats:
            d["stats"] = self.stats
        return d


@dataclass
class Conversation:
    id: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6])
    title: str = ""
    model_id: str | None = None
    model_name: str | None = None
    system: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    @property
    def display_title(self) -> str:
        return self.title or "New chat"

    def engine_messages(self) -> list[dict[str, str]]:
        """The conversation as the engine's chat template wants it."""
        out = [{"role": "system", "content": self.system}] if self.system.strip() else []
        return out + [{"role": m.role, "content": m.content} for m in self.messages]

    def add(self, role: str, content: str, stats: dict[str, Any] | None = None) -> Message:
        msg = Message(role, content, stats)
        self.messages.append(msg)
        if role == "user" and not self.title:
            line = " ".join(content.split())
            self.title = line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"
        return msg

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["messages"] = [m.to_dict() for m in self.messages]
        return {"version": FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Conversation:
        msgs = [
            Message(str(m["role"]), str(m.get("content", "")), m.get("stats"))
            for m in data.get("messages", [])
            if isinstance(m, dict) and m.get("role") in ("user", "assistant")
        ]
        return cls(
            id=str(data["id"]),
            title=str(data.get("title", "")),
            model_id=data.get("model_id"),
            model_name=data.get("model_name"),
            system=str(data.get("system", "")),
            settings=dict(data.get("settings") or {}),
            messages=msgs,
            created=float(data.get("created", 0.0)),
            updated=float(data.get("updated", 0.0)),
        )


class ChatStore:
    """The chats folder: list, load, save (atomic), delete."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, conv: Conversation) -> Path:
        return self.folder / f"{conv.id}.json"

    def save(self, conv: Conversation) -> Path:
        conv.updated = time.time()
        path = self.path(conv)
        atomic_write_text(path, json.dumps(conv.to_dict(), indent=1, ensure_ascii=False))
        return path

    def load(self, path: Path) -> Conversation:
        return Conversation.from_dict(json.loads(path.read_text(encoding="utf-8")))

    def list(self) -> list[Conversation]:
        """Every readable chat, most recently updated first (unreadable files are skipped)."""
        if not self.folder.is_dir():
            return []
        found = []
        for p in self.folder.glob("*.json"):
            try:
                found.append(self.load(p))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return sorted(found, key=lambda c: c.updated, reverse=True)

    def delete(self, conv: Conversation) -> None:
        self.path(conv).unlink(missing_ok=True)
