"""A test stage in Python that attacks its host in the way config `attack`
names, as tests/plugins/hostile does in Rust: `none` (behaves), `loop`,
`recurse`, `alloc`, `read-file`, `list-root`, `env`, `socket` (config
`address`), `unknown-model`; and `infer`, no attack: the model `intent`
through the SDK on token ids [2, 5, 7], its first output as `y`. Input `x`,
output `y`."""

import os
import socket

import outpost_guest as og


class Hostile(og.Stage):
    def __init__(self, config: og.Config):
        self.attack = config.require("attack")
        self.address = config.get("address", "127.0.0.1:9")
        config.get("model")

    def describe(self) -> og.StageInfo:
        return og.stage_info("py-hostile", "0.1.0", "attacks its host",
                             inputs=[og.spec("x")], outputs=[og.spec("y")])

    def run(self, inputs: og.Inputs) -> list:
        attack = self.attack
        if attack == "none":
            return [og.from_f32("y", [1], [1.0])]
        if attack == "loop":
            n = 0
            while True:
                n += 1
        if attack == "recurse":
            def down(n):
                return down(n + 1) + 1
            return [og.from_f32("y", [1], [float(down(0))])]
        if attack == "alloc":
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        if attack == "read-file":
            try:
                with open("/etc/passwd", "rb") as f:
                    return [og.from_f32("y", [1], [float(len(f.read()))])]
            except OSError as e:
                raise og.StageError.internal(f"reading /etc/passwd: {e}") from None
        if attack == "list-root":
            try:
                return [og.from_f32("y", [1], [float(len(os.listdir("/")))])]
            except OSError as e:
                raise og.StageError.internal(f"listing /: {e}") from None
        if attack == "env":
            home = os.environ.get("HOME")
            if home is None:
                raise og.StageError.internal("reading HOME: environment variable not found")
            return [og.from_f32("y", [1], [float(len(home))])]
        if attack == "socket":
            host, port = self.address.rsplit(":", 1)
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.settimeout(5)
                    s.connect((host, int(port)))
                return [og.from_f32("y", [1], [1.0])]
            except OSError as e:
                raise og.StageError.internal(f"connecting to {self.address}: {e}") from None
        if attack == "infer":
            model = og.Model.load("intent")
            outputs = model.compute([
                og.from_i64("input_ids", [1, 3], [2, 5, 7]),
                og.from_i64("attention_mask", [1, 3], [1, 1, 1]),
            ])
            first = outputs[0]
            return [og.Tensor("y", first.dims, first.element_type, first.data)]
        if attack == "unknown-model":
            og.Model.load("not-granted")
            return []
        raise og.StageError.invalid_config(f"unknown attack '{attack}'")


WitWorld = og.export_stage(Hostile)
