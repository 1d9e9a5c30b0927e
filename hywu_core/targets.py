"""Which Linear modules of a backbone get a generated LoRA: the target spec (paper §3.4).

A spec is the ordered list of the backbone's l repeated blocks ("layers" of the parameter
tensor T in (l, s, r, d)) and, in each block, the adapted Linear modules with their shapes.

Repeated blocks. By default they are the entries of every `nn.ModuleList` that is a direct
child of the diffusion model (`joint_blocks`; `double_blocks` + `single_blocks`;
`transformer_blocks`; `blocks`; `noise_refiner` + `context_refiner` + `layers`;
`input_blocks` + `output_blocks`), plus a direct child named `middle_block` (a UNet's single
mid block). Several lists combine by concatenation in the model's registration order, so
layer index i runs through the first list, then the next (for a UNet: input blocks, middle
block, output blocks). A block with no selected Linear is left out: it has no parameters to
generate. Blocks of different shapes are fine; the tokenizer pads and masks shorter layers.

Grouped experts. Linear modules whose in-block path matches `expert_pattern` (default: a
numeric component after `experts`, e.g. `mlp.experts.3.w1`) are one role with E members
(`mlp.experts.w1`, members `mlp.experts.0.w1` ... `mlp.experts.{E-1}.w1`); their LoRA factors
carry a leading expert axis. A role with no member paths is "virtual": the official release names
HunyuanImage-3's expert LoRA by sub weight (`mlp.experts.w1` / `w2` / `w3`) and applies it in its own
expert forward. `bind_expert_groups` binds such roles to a model's own expert modules, as the model
declares them (the port's `expert_lora_slots`); a bound role may write only some output rows of its
members (`out_slice`: w3 and w1 share each expert's fused gate_and_up_proj, one half each).
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Mapping

DEFAULT_EXPERT_PATTERN = r"(?:^|\.)experts\.(\d+)\."
_JSON_FORMAT = "hywu.target_spec"
_JSON_VERSION = 1


def read_versioned_json(text: str, fmt: str, version: int, what: str) -> dict:
    """Parse a {"format": fmt, "version": version, ...} document stored in generator metadata."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} JSON does not parse: {e}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ValueError(f"not a {what} JSON (expected \"format\": \"{fmt}\")")
    if data.get("version") != version:
        raise ValueError(f"{what} JSON version {data.get('version')} is not supported "
                         f"(this code reads version {version})")
    return data


class TargetMismatchError(ValueError):
    """A target spec does not fit the model it is applied to."""


@dataclass(frozen=True)
class TargetModule:
    """One adapted Linear (or a role grouping `experts` same-shaped Linears) inside a block.

    `name` is the path inside the block; for a group, the role name. `members` are the
    in-block paths of the experts, in expert order (empty for single modules and virtual groups).
    `out_slice` (start, stop): the output rows of the Linear (each member's) that this LoRA writes,
    stop - start = d_out; None: all of them.
    """

    name: str
    d_in: int
    d_out: int
    experts: int = 1
    members: tuple[str, ...] = ()
    out_slice: tuple[int, int] | None = None

    def __post_init__(self):
        if not self.name:
            raise ValueError("TargetModule.name is empty")
        if self.d_in < 1 or self.d_out < 1 or self.experts < 1:
            raise ValueError(f"TargetModule {self.name}: d_in, d_out and experts must be >= 1, "
                             f"got d_in={self.d_in}, d_out={self.d_out}, experts={self.experts}")
        object.__setattr__(self, "members", tuple(self.members))
        if self.members and len(self.members) != self.experts:
            raise ValueError(f"TargetModule {self.name}: {len(self.members)} member paths for "
                             f"{self.experts} experts; give one path per expert or none")
        if self.out_slice is not None:
            start, stop = (int(v) for v in self.out_slice)
            if start < 0 or stop - start != self.d_out:
                raise ValueError(f"TargetModule {self.name}: out_slice {tuple(self.out_slice)} must be rows "
                                 f"[start, start + d_out) with start >= 0 (d_out={self.d_out})")
            object.__setattr__(self, "out_slice", (start, stop))

    @property
    def linears(self) -> tuple[str, ...]:
        """The in-block paths of the Linear modules this LoRA writes, one per expert (a single module: its name)."""
        return self.members if self.members else (self.name,)

    @property
    def grouped(self) -> bool:
        """True when the LoRA factors carry a leading expert axis."""
        return self.experts > 1 or bool(self.members)


@dataclass(frozen=True)
class TargetBlock:
    """One repeated block: its path from the diffusion model root and its adapted modules."""

    prefix: str
    modules: tuple[TargetModule, ...]

    def __post_init__(self):
        object.__setattr__(self, "modules", tuple(self.modules))
        if not self.modules:
            raise ValueError(f"TargetBlock {self.prefix!r} has no modules")
        names = [m.name for m in self.modules]
        if len(set(names)) != len(names):
            raise ValueError(f"TargetBlock {self.prefix!r} lists a module twice: {names}")

    def path(self, name: str) -> str:
        """Full path from the diffusion model root of an in-block path."""
        return f"{self.prefix}.{name}" if self.prefix else name


@dataclass(frozen=True)
class TargetSpec:
    """The ordered LoRA targets of a backbone: l blocks, each with its adapted modules."""

    blocks: tuple[TargetBlock, ...]

    def __post_init__(self):
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not self.blocks:
            raise ValueError("TargetSpec has no blocks")
        repeated = [p for p, n in Counter(self.module_paths()).items() if n > 1]
        if repeated:
            raise ValueError(f"TargetSpec lists module {repeated[0]!r} twice")

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def module_paths(self) -> list[str]:
        """Full paths ("<prefix>.<name>") in spec order."""
        return [block.path(m.name) for block in self.blocks for m in block.modules]

    def items(self) -> Iterator[tuple[str, TargetModule]]:
        """(full path, module) pairs in spec order."""
        for block in self.blocks:
            for m in block.modules:
                yield block.path(m.name), m

    def dims(self) -> list[int]:
        """Every distinct adapted dimension (d_in and d_out), sorted."""
        return sorted({d for _, m in self.items() for d in (m.d_in, m.d_out)})

    def gcd(self) -> int:
        """Greatest common divisor of all adapted dimensions (the default token width d)."""
        return math.gcd(*self.dims())

    def to_json(self) -> str:
        blocks = []
        for block in self.blocks:
            modules = []
            for m in block.modules:
                entry = {"name": m.name, "d_in": m.d_in, "d_out": m.d_out}
                if m.grouped:
                    entry["experts"] = m.experts
                    entry["members"] = list(m.members)
                if m.out_slice is not None:
                    entry["out_slice"] = list(m.out_slice)
                modules.append(entry)
            blocks.append({"prefix": block.prefix, "modules": modules})
        return json.dumps({"format": _JSON_FORMAT, "version": _JSON_VERSION, "blocks": blocks},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str) -> "TargetSpec":
        data = read_versioned_json(s, _JSON_FORMAT, _JSON_VERSION, "target spec")
        return cls(tuple(
            TargetBlock(b["prefix"], tuple(
                TargetModule(m["name"], m["d_in"], m["d_out"], m.get("experts", 1), tuple(m.get("members", ())),
                             tuple(m["out_slice"]) if m.get("out_slice") is not None else None)
                for m in b["modules"]))
            for b in data["blocks"]))

    def verify(self, diffusion_model, max_report: int = 5) -> None:
        """Raise TargetMismatchError naming the first modules that are missing or shaped differently."""
        problems = []
        for block in self.blocks:
            for m in block.modules:
                if m.grouped and not m.members:
                    parent = block.path(m.name).rpartition(".")[0]
                    if parent and _find_module(diffusion_model, parent) is None:
                        problems.append(f"{parent}: missing (parent of expert group {block.path(m.name)})")
                    continue
                for linear in m.linears:
                    problems += _check_linear(diffusion_model, block.path(linear), m.d_in, m.d_out, m.out_slice)
        if problems:
            shown = "; ".join(problems[:max_report])
            more = f" (and {len(problems) - max_report} more)" if len(problems) > max_report else ""
            raise TargetMismatchError(
                f"the target spec does not match this model, {len(problems)} mismatch(es): {shown}{more}. "
                "The generator was made for a different backbone; use a generator trained for this model.")

    def to_pg_config(self) -> dict:
        """The official release's config fields {"prefix", "num_base_model_layers", "pg_mapping"}.

        Needs blocks "<prefix><i>" for i = 0..l-1 that all hold the same modules; grouped roles
        sharing a parent ("mlp.experts.w1", ".w2", ...) and standing next to each other become
        one {"type": "grouped", "num_experts": E, "sub_weights": {...}} entry.
        """
        first = self.blocks[0]
        match = re.fullmatch(r"(.*?)0", first.prefix)
        prefix = match.group(1) if match else None
        signature = [(m.name, m.d_in, m.d_out, m.experts, m.grouped) for m in first.modules]
        for i, block in enumerate(self.blocks):
            if prefix is None or block.prefix != f"{prefix}{i}":
                raise ValueError(f"block {i} has prefix {block.prefix!r}; the official format needs "
                                 f"'<prefix><layer index>' for layers 0..{len(self.blocks) - 1}")
            if [(m.name, m.d_in, m.d_out, m.experts, m.grouped) for m in block.modules] != signature:
                raise ValueError(f"block {block.prefix!r} holds different modules than {first.prefix!r}; "
                                 "the official format needs the same modules in every layer")
        mapping: dict = {}
        for m in first.modules:
            if not m.grouped:
                mapping[m.name] = {"lora_A_dim": m.d_in, "lora_B_dim": m.d_out}
                continue
            parent, _, sub = m.name.rpartition(".")
            if not parent:
                raise ValueError(f"grouped role {m.name!r} needs a parent path ('<group>.<sub weight>')")
            last_key = next(reversed(mapping), None)
            entry = mapping.get(parent)
            if entry is None:
                entry = mapping[parent] = {"type": "grouped", "num_experts": m.experts, "sub_weights": {}}
            elif last_key != parent or entry.get("type") != "grouped" or entry["num_experts"] != m.experts:
                raise ValueError(f"grouped role {m.name!r} cannot join group {parent!r}: group roles must "
                                 "stand next to each other and share the expert count")
            entry["sub_weights"][sub] = {"lora_A_dim": m.d_in, "lora_B_dim": m.d_out}
        return {"prefix": prefix, "num_base_model_layers": len(self.blocks), "pg_mapping": mapping}

    @classmethod
    def from_pg_config(cls, config: Mapping) -> "TargetSpec":
        """The spec of an official release config (config.json's prefix, num_base_model_layers, pg_mapping).

        Grouped entries expand to roles "<group>.<sub weight>" in sub_weights order, at the
        group's position, as the official tokenizer expands them; they are virtual (no members).
        """
        missing = [k for k in ("prefix", "num_base_model_layers", "pg_mapping") if k not in config]
        if missing:
            raise ValueError(f"official generator config lacks {missing}; expected the fields of "
                             "config.json (model_type 'parameter_generator')")
        modules = []
        for name, dims in config["pg_mapping"].items():
            if dims.get("type") == "grouped":
                for sub, sub_dims in dims["sub_weights"].items():
                    modules.append(TargetModule(f"{name}.{sub}", int(sub_dims["lora_A_dim"]),
                                                int(sub_dims["lora_B_dim"]), int(dims["num_experts"])))
            else:
                modules.append(TargetModule(name, int(dims["lora_A_dim"]), int(dims["lora_B_dim"])))
        prefix = config["prefix"]
        return cls(tuple(TargetBlock(f"{prefix}{i}", tuple(modules))
                         for i in range(int(config["num_base_model_layers"]))))


def bind_expert_groups(spec: TargetSpec, slots: Mapping[str, tuple[str, int, int]] | None) -> TargetSpec:
    """`spec` with every virtual expert group bound to a model's own expert modules (others unchanged).

    `slots` is what the model declares: {sub weight: (Linear inside an expert, part, parts)}. Role
    "<group>.<sub>" with E experts then has members "<group>.<e>.<Linear>" and writes output rows
    [part * d_out, (part + 1) * d_out) of Linears with parts * d_out outputs (parts 1: the whole output)."""
    virtual = [block.path(m.name) for block in spec.blocks for m in block.modules if m.grouped and not m.members]
    if not virtual:
        return spec
    if not slots:
        raise TargetMismatchError(
            f"the LoRA adapts expert groups by sub weight ({virtual[0]} ...), as the official HY-WU release "
            "does for HunyuanImage-3.0, but this model does not say where such sub weights go; use it with "
            "HunyuanImage-3.0-Instruct (HYWU's HunyuanImage-3 Loader)")
    blocks = []
    for block in spec.blocks:
        modules = []
        for m in block.modules:
            if m.grouped and not m.members:
                group, _, sub = m.name.rpartition(".")
                if sub not in slots:
                    raise TargetMismatchError(f"expert sub weight {sub!r} of {block.path(m.name)} is not one this "
                                              f"model defines ({', '.join(slots)}); the LoRA was made for another "
                                              "backbone")
                linear, part, parts = slots[sub]
                out_slice = (part * m.d_out, (part + 1) * m.d_out) if parts > 1 else None
                m = TargetModule(m.name, m.d_in, m.d_out, m.experts,
                                 tuple(f"{group}.{e}.{linear}" for e in range(m.experts)), out_slice)
            modules.append(m)
        blocks.append(TargetBlock(block.prefix, tuple(modules)))
    return TargetSpec(tuple(blocks))


def derive_targets(diffusion_model, include: list[str] | None = None, exclude: list[str] | None = None,
                   *, block_lists: list[str] | None = None,
                   expert_pattern: str | None = DEFAULT_EXPERT_PATTERN) -> TargetSpec:
    """Derive the target spec of a diffusion model from the model itself.

    Default: every Linear (torch.nn.Linear and ComfyUI's comfy.ops Linear classes) inside the
    repeated blocks (see the module docstring). `include` / `exclude` are regular expressions
    searched in full module paths ("double_blocks.0.img_attn.qkv"): a module is kept when it
    matches some include (or include is None) and no exclude. `block_lists` names the
    submodules to take blocks from, direct children or dotted paths such as "model.layers" (a
    ModuleList gives one block per entry, any other module is one block). `expert_pattern`
    (None: no grouping) groups experts; its first capture group is the expert index.
    """
    includes = [re.compile(p) for p in include or []]
    excludes = [re.compile(p) for p in exclude or []]
    expert_re = re.compile(expert_pattern) if expert_pattern else None
    blocks = []
    for prefix, block in _repeated_blocks(diffusion_model, block_lists):
        found = []
        for rel, module in block.named_modules():
            if not rel or not _is_linear(module):
                continue
            full = f"{prefix}.{rel}"
            if includes and not any(r.search(full) for r in includes):
                continue
            if any(r.search(full) for r in excludes):
                continue
            found.append((rel, int(module.in_features), int(module.out_features)))
        if found:
            blocks.append(TargetBlock(prefix, tuple(_group_experts(prefix, found, expert_re))))
    if not blocks:
        raise ValueError(f"no Linear module selected in {type(diffusion_model).__name__}'s repeated blocks "
                         f"(include={include}, exclude={exclude}); loosen the patterns")
    return TargetSpec(tuple(blocks))


def _repeated_blocks(model, block_lists: list[str] | None) -> Iterator[tuple[str, object]]:
    import torch.nn as nn

    children = dict(model.named_children())
    if block_lists is None:
        names = [n for n, c in children.items() if isinstance(c, nn.ModuleList) or n == "middle_block"]
        if not names:
            raise ValueError(f"{type(model).__name__} has no nn.ModuleList of blocks as a direct child; "
                             "name the block containers with block_lists=[...]")
    else:
        children = {}
        for name in block_lists:
            try:
                children[name] = model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"block_lists names {name!r}, which is not a submodule of {type(model).__name__} "
                                 f"(its children: {[n for n, _ in model.named_children()]})") from None
        names = list(block_lists)
    for name in names:
        child = children[name]
        if isinstance(child, nn.ModuleList):
            for i, entry in enumerate(child):
                yield f"{name}.{i}", entry
        else:
            yield name, child


def _group_experts(prefix: str, found: list[tuple[str, int, int]], expert_re) -> list[TargetModule]:
    """Single modules as they come; expert members collected into one role at the first member's place."""
    order: list[str] = []
    singles: dict[str, TargetModule] = {}
    groups: dict[str, dict[int, tuple[str, int, int]]] = {}
    for rel, d_in, d_out in found:
        match = expert_re.search(rel) if expert_re else None
        if match is None:
            order.append(rel)
            singles[rel] = TargetModule(rel, d_in, d_out)
            continue
        role = rel[:match.start(1)] + rel[match.end(1) + 1:]
        if role not in groups:
            order.append(role)
            groups[role] = {}
        groups[role][int(match.group(1))] = (rel, d_in, d_out)
    modules = []
    for key in order:
        if key in singles:
            modules.append(singles[key])
            continue
        members = groups[key]
        indices = sorted(members)
        if indices != list(range(len(indices))):
            raise ValueError(f"expert group {prefix}.{key} has experts {indices}; expected 0..{len(indices) - 1} "
                             "(exclude the group or pass expert_pattern=None to adapt experts one by one)")
        shapes = {(d_in, d_out) for _, d_in, d_out in members.values()}
        if len(shapes) != 1:
            raise ValueError(f"expert group {prefix}.{key} mixes shapes {sorted(shapes)} (d_in, d_out); "
                             "a group's experts must share one shape")
        (d_in, d_out), = shapes
        modules.append(TargetModule(key, d_in, d_out, len(indices), tuple(members[i][0] for i in indices)))
    return modules


def _is_linear(module) -> bool:
    """torch.nn.Linear and its subclasses, and ComfyUI's quantized Linear (not an nn.Linear subclass)."""
    import torch.nn as nn

    if isinstance(module, nn.Linear):
        return True
    return (type(module).__name__ == "Linear" and isinstance(getattr(module, "in_features", None), int)
            and isinstance(getattr(module, "out_features", None), int))


def _find_module(model, path: str):
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _check_linear(model, path: str, d_in: int, d_out: int, out_slice: tuple[int, int] | None = None) -> list[str]:
    module = _find_module(model, path)
    if module is None:
        return [f"{path}: missing"]
    if not _is_linear(module):
        return [f"{path}: is a {type(module).__name__}, not a Linear"]
    if out_slice is not None:
        if module.in_features != d_in or module.out_features < out_slice[1]:
            return [f"{path}: shape differs, model has (d_in={module.in_features}, d_out={module.out_features}), "
                    f"spec writes (d_in={d_in}, output rows {out_slice[0]}..{out_slice[1] - 1})"]
        return []
    if (module.in_features, module.out_features) != (d_in, d_out):
        return [f"{path}: shape differs, model has (d_in={module.in_features}, d_out={module.out_features}), "
                f"spec has (d_in={d_in}, d_out={d_out})"]
    return []

