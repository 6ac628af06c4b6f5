"""Keyboard and SpaceMouse teleop logic, driven directly (no display, no USB device)."""

from __future__ import annotations

import enum
import os
import struct

import numpy as np
import pytest

os.environ.setdefault("PYNPUT_BACKEND", "dummy")  # headless: lets pynput import and build Key objects
keyboard = pytest.importorskip("pynput.keyboard")

from hardware.teleop import (  # noqa: E402
    KeyboardConfig,
    KeyboardTeleop,
    SpaceMouseConfig,
    SpaceMouseTeleop,
    TeleopCommand,
    TeleopDevice,
    TeleopError,
    parse_report,
)

C = keyboard.KeyCode.from_char
# pynput's dummy backend (the only one that imports headless) defines every Key member with the same value, so
# Enum aliases them all to Key.alt. Real backends (xorg, win32, darwin) define Key as an Enum whose members are
# KeyCodes with distinct vks; build exactly that here so special keys are distinguishable, as on a real desktop.
if len({keyboard.Key.up, keyboard.Key.space, keyboard.Key.enter}) == 3:
    K = keyboard.Key
else:
    K = enum.Enum(  # type: ignore[misc]
        "Key", {n: keyboard.KeyCode.from_vk(100 + i) for i, n in enumerate(["up", "down", "left", "right", "space", "enter", "esc", "shift"])}
    )


def tap(kb: KeyboardTeleop, key) -> None:
    kb.on_press(key)
    kb.on_release(key)


def test_keyboard_motion_keys_and_cancellation():
    kb = KeyboardTeleop(KeyboardConfig(listen=False))
    assert isinstance(kb, TeleopDevice)
    kb.start()  # listen=False: no OS listener, works headless
    np.testing.assert_array_equal(kb.read().action, [0, 0, 0, 0, 0, 0, -1])
    kb.on_press(C("w"))
    kb.on_press(C("A"))  # shifted/caps letter means the same key
    kb.on_press(K.up)
    kb.on_press(C("x"))
    cmd = kb.read()
    assert cmd.action.dtype == np.float32 and cmd.action.shape == (7,)
    np.testing.assert_array_equal(cmd.action, [1, 1, 0, 1, 0, -1, -1])
    kb.on_press(C("s"))  # opposite of w held together: cancels
    kb.on_release(C("a"))
    kb.on_release(K.up)
    np.testing.assert_array_equal(kb.read().action, [0, 0, 0, 0, 0, -1, -1])
    for k in ("w", "s", "x"):
        kb.on_release(C(k))
    kb.on_press(C("f"))
    kb.on_press(K.right)
    np.testing.assert_array_equal(kb.read().action, [0, 0, -1, 0, -1, 0, -1])
    kb.stop()


def test_keyboard_speed_scales_motion_not_gripper():
    kb = KeyboardTeleop(KeyboardConfig(listen=False, speed=0.25))
    kb.on_press(C("r"))
    tap(kb, K.space)
    np.testing.assert_allclose(kb.read().action, [0, 0, 0.25, 0, 0, 0, 1.0])


def test_keyboard_gripper_toggle_ignores_autorepeat():
    kb = KeyboardTeleop(KeyboardConfig(listen=False))
    kb.on_press(K.space)
    kb.on_press(K.space)  # OS auto-repeat while held
    assert kb.read().action[6] == 1.0
    kb.on_release(K.space)
    tap(kb, K.space)
    assert kb.read().action[6] == -1.0


def test_keyboard_events_are_drained_once():
    kb = KeyboardTeleop(KeyboardConfig(listen=False))
    tap(kb, K.enter)
    tap(kb, C("y"))
    cmd = kb.read()
    assert cmd.events == frozenset({"start", "save"})
    np.testing.assert_array_equal(cmd.action[:6], 0)  # event keys do not move the arm
    assert kb.read().events == frozenset()
    for key, ev in [(C("n"), "discard"), (C("b"), "redo"), (K.esc, "quit")]:
        tap(kb, key)
        assert kb.read().events == frozenset({ev})
    tap(kb, C("q"))  # deliberately unmapped
    assert kb.read().events == frozenset()


def test_keyboard_control_chars_map_to_special_keys():
    kb = KeyboardTeleop(KeyboardConfig(listen=False))
    tap(kb, C(" "))
    tap(kb, C("\r"))
    tap(kb, K.shift)  # unmapped special key: no effect
    cmd = kb.read()
    assert cmd.action[6] == 1.0 and cmd.events == frozenset({"start"})


def test_keyboard_dummy_backend_refuses_to_listen(monkeypatch):
    monkeypatch.setenv("PYNPUT_BACKEND", "dummy")
    with pytest.raises(TeleopError, match="dummy"):
        KeyboardTeleop(KeyboardConfig(listen=True)).start()


# ---------------------------------------------------------------------------------------------------- spacemouse
def rep(rid: int, *vals: int) -> bytes:
    return bytes([rid]) + struct.pack(f"<{len(vals)}h", *vals)


def test_parse_report_translation_rotation_buttons():
    st = parse_report(rep(1, 350, -175, 0), deadzone=0.0)
    np.testing.assert_allclose(st.axes, [1.0, -0.5, 0, 0, 0, 0])
    st = parse_report(rep(2, 0, 700, -35), st, deadzone=0.0)  # beyond full scale clips to 1
    np.testing.assert_allclose(st.axes, [1.0, -0.5, 0, 0, 1.0, -0.1])
    st = parse_report(bytes([3, 0b10, 0]), st)
    assert st.buttons == 2
    np.testing.assert_allclose(st.axes[:3], [1.0, -0.5, 0])  # a button report keeps the axes
    st = parse_report(bytes([23, 80]), st)  # battery report: ignored
    assert st.buttons == 2


def test_parse_report_combined_six_axis_report_and_negative_bytes():
    # 13-byte id-1 report (newer devices): all six axes, little-endian signed. -1 is b'\xff\xff'.
    report = bytes([1]) + b"\xff\xff" + struct.pack("<5h", 350, 0, 0, 0, -350)
    st = parse_report(report, deadzone=0.0)
    np.testing.assert_allclose(st.axes, [-1 / 350, 1, 0, 0, 0, -1])


def test_parse_report_deadzone_is_continuous():
    dz = 0.1
    assert parse_report(rep(1, 34, -34, 0), deadzone=dz).axes[:3].tolist() == [0, 0, 0]  # |34/350| < 0.1
    st = parse_report(rep(1, 175, -350, 36), deadzone=dz)
    np.testing.assert_allclose(st.axes[:3], [(0.5 - dz) / (1 - dz), -1.0, (36 / 350 - dz) / (1 - dz)])
    assert 0 < st.axes[2] < 0.01  # just past the edge: small, not a jump to 0.1


def test_spacemouse_mapping_and_button_edges():
    sm = SpaceMouseTeleop(SpaceMouseConfig(deadzone=0.0))
    sm.feed(rep(1, 0, -350, 175))  # push away from operator (device -y) and down (device +z)
    sm.feed(rep(2, 0, 0, 350))
    cmd = sm.read()
    np.testing.assert_allclose(cmd.action, [1.0, 0, -0.5, 0, 0, -1.0, -1.0])
    assert cmd.events == frozenset()
    sm.feed(bytes([3, 0b01]))  # left press: close gripper
    sm.feed(bytes([3, 0b01]))  # still held: no second toggle
    sm.feed(bytes([3, 0b11]))  # right pressed too: save event
    cmd = sm.read()
    assert cmd.action[6] == 1.0 and cmd.events == frozenset({"save"})
    sm.feed(bytes([3, 0]))
    sm.feed(bytes([3, 0b01]))
    cmd = sm.read()
    assert cmd.action[6] == -1.0 and cmd.events == frozenset()


def test_spacemouse_missing_device_one_line_error():
    pytest.importorskip("hid")
    sm = SpaceMouseTeleop(SpaceMouseConfig(vendor_id=0xFFFE))  # no such vendor on any machine
    with pytest.raises(TeleopError, match="no SpaceMouse found") as err:
        sm.start()
    assert "\n" not in str(err.value)


def test_teleop_command_defaults():
    cmd = TeleopCommand(action=np.zeros(7, np.float32))
    assert cmd.events == frozenset()
