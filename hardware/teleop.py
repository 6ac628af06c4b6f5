"""Teleoperation devices producing the stack's 7-D normalised delta actions plus episode-control events.

Both devices keep their input handling in pure methods (`KeyboardTeleop.on_press/on_release`,
`parse_report`) so tests can drive them without a display or USB device; the OS listeners/readers only feed
those methods.

Keyboard map (pynput), chosen so no control key collides with a motion key:
    w / s        +x / -x (away from / towards the operator)
    a / d        +y / -y
    r / f        +z / -z
    Up / Down    rotate +/- about x          Left / Right   rotate +/- about y
    z / x        rotate +/- about z
    space        toggle gripper (starts open: -1; closed: +1)
    Enter        event "start"  (begin recording an episode)
    y            event "save"   (keep the episode; the operator labels success here)
    n            event "discard"
    b            event "redo"   (discard and restart the same episode)
    Esc          event "quit"   (q is deliberately unused: it sits next to w/a and is easy to hit by accident)

SpaceMouse: 6 axes -> motion (see SpaceMouseConfig.axis_order/axis_signs for the mapping to the robot frame);
left button toggles the gripper; right button emits the event in SpaceMouseConfig.right_button_event ("save").
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, runtime_checkable

import numpy as np

EVENTS = frozenset({"start", "save", "discard", "redo", "quit"})


class TeleopError(RuntimeError):
    """A teleop device could not be opened or read."""


def _no_keyboard_reason(error: Exception) -> str:
    """One line saying why pynput cannot read the keyboard here and what to do (pynput's own text spans lines)."""
    display = os.environ.get("DISPLAY")
    if not display:
        return ("keyboard teleop needs a graphical session and DISPLAY is not set: run `robo collect` from a desktop "
                "terminal (or over `ssh -X`), or record with --source spacemouse")
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f"keyboard teleop cannot use the display DISPLAY={display} (pynput: {first}); check that the X server "
            f"is running and reachable, or record with --source spacemouse")


@dataclass(frozen=True)
class TeleopCommand:
    """One teleop sample: the action to send now and the events seen since the previous read()."""

    action: np.ndarray  # (7,) float32 in [-1, 1]: dpos(3), drot axis-angle(3), gripper (-1 open, +1 close)
    events: frozenset[str] = frozenset()  # subset of EVENTS


@runtime_checkable
class TeleopDevice(Protocol):
    def start(self) -> None: ...

    def read(self) -> TeleopCommand: ...

    def stop(self) -> None: ...


class _GripperToggle:
    """Edge-triggered gripper state shared by both devices: each press flips open (-1) <-> closed (+1)."""

    def __init__(self) -> None:
        self.value = -1.0

    def toggle(self) -> None:
        self.value = -self.value


# ------------------------------------------------------------------------------------------------------ keyboard
@dataclass
class KeyboardConfig:
    """Keyboard teleop settings."""

    speed: float = 1.0  # magnitude of a held motion key in [0, 1]; <1 gives finer manual control
    listen: bool = True  # start a pynput OS listener in start(); False = caller feeds on_press/on_release (tests)


# motion key -> (action index, sign)
_CHAR_MOTION: dict[str, tuple[int, float]] = {
    "w": (0, 1.0), "s": (0, -1.0), "a": (1, 1.0), "d": (1, -1.0), "r": (2, 1.0), "f": (2, -1.0),
    "z": (5, 1.0), "x": (5, -1.0),
}
_SPECIAL_MOTION: dict[str, tuple[int, float]] = {"up": (3, 1.0), "down": (3, -1.0), "left": (4, 1.0), "right": (4, -1.0)}
_CHAR_EVENTS = {"y": "save", "n": "discard", "b": "redo"}
_SPECIAL_EVENTS = {"enter": "start", "esc": "quit"}


# Some backends deliver these special keys as plain KeyCodes carrying a control character.
_CHAR_TO_SPECIAL = {" ": "space", "\r": "enter", "\n": "enter", "\x1b": "esc"}


def _key_id(key: Any) -> Optional[str]:
    """Normalise pynput Key/KeyCode to a string: 'c:<char>' (lower-cased) or 'k:<Key name>'.

    Special keys are matched by enum member *name* (Key.up -> 'up'), never by value: values are backend
    specific, and pynput's dummy backend even gives every Key the same value.
    """
    name = getattr(key, "name", None)
    if name:  # a Key enum member (pynput.keyboard.Key.<name>)
        return "k:" + name
    char = getattr(key, "char", None)
    if char:
        if char in _CHAR_TO_SPECIAL:
            return "k:" + _CHAR_TO_SPECIAL[char]
        return "c:" + char.lower()  # caps lock / shift must not change the meaning of a key
    return None


class KeyboardTeleop:
    """Held keys give constant-velocity motion; space toggles the gripper; control keys produce events."""

    def __init__(self, config: Optional[KeyboardConfig] = None) -> None:
        self.config = config or KeyboardConfig()
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._events: set[str] = set()
        self._gripper = _GripperToggle()
        self._listener: Any = None

    def start(self) -> None:
        if not self.config.listen or self._listener is not None:
            return
        if os.environ.get("PYNPUT_BACKEND") == "dummy":
            # The dummy backend constructs but its listener thread dies with NotImplementedError; fail loudly
            # instead of teleoperating with a keyboard that is silently ignored.
            raise TeleopError("keyboard teleop cannot listen with PYNPUT_BACKEND=dummy (a test setting); unset it "
                              "and run from a desktop session, or record with --source spacemouse")
        try:
            from pynput import keyboard
        except ImportError as e:  # no X display and no backend: pynput raises at import, with a multi-line text
            raise TeleopError(_no_keyboard_reason(e)) from None
        self._listener = keyboard.Listener(on_press=self.on_press, on_release=self.on_release)
        self._listener.start()

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None

    def on_press(self, key: Any) -> None:
        kid = _key_id(key)
        if kid is None:
            return
        with self._lock:
            if kid in self._held:  # OS auto-repeat sends repeated presses; only the first edge counts
                return
            self._held.add(kid)
            if kid == "k:space":
                self._gripper.toggle()
            elif kid.startswith("c:") and kid[2:] in _CHAR_EVENTS:
                self._events.add(_CHAR_EVENTS[kid[2:]])
            elif kid.startswith("k:") and kid[2:] in _SPECIAL_EVENTS:
                self._events.add(_SPECIAL_EVENTS[kid[2:]])

    def on_release(self, key: Any) -> None:
        kid = _key_id(key)
        with self._lock:
            self._held.discard(kid or "")

    def read(self) -> TeleopCommand:
        action = np.zeros(7, dtype=np.float32)
        with self._lock:
            for kid in self._held:
                kind, name = kid[:2], kid[2:]
                m = _CHAR_MOTION.get(name) if kind == "c:" else _SPECIAL_MOTION.get(name)
                if m is not None:
                    action[m[0]] += m[1]  # opposite keys held together cancel
            events, self._events = frozenset(self._events), set()
            action[6] = self._gripper.value
        action[:6] = np.clip(action[:6], -1.0, 1.0) * self.config.speed
        return TeleopCommand(action=action, events=events)


# ---------------------------------------------------------------------------------------------------- spacemouse
VENDOR_3DCONNEXION = 0x256F
# Product ids of the 3Dconnexion devices this parser has report layouts for.
SPACEMOUSE_PRODUCTS = {
    0xC62E: "SpaceMouse Wireless (cable)",
    0xC62F: "SpaceMouse Wireless (receiver)",
    0xC631: "SpaceMouse Pro Wireless (cable)",
    0xC632: "SpaceMouse Pro Wireless (receiver)",
    0xC635: "SpaceMouse Compact",
    0xC652: "3Dconnexion Universal Receiver",
}


@dataclass
class SpaceMouseConfig:
    """SpaceMouse teleop settings."""

    vendor_id: int = VENDOR_3DCONNEXION  # USB vendor id to open
    product_ids: tuple[int, ...] = tuple(SPACEMOUSE_PRODUCTS)  # first connected one of these is used
    full_scale: float = 350.0  # raw axis count that maps to |1.0|; the puck saturates around 350
    deadzone: float = 0.1  # |scaled value| below this reads as 0 (hands resting on the puck drift)
    # action[i] = axis_signs[i] * device_axes[axis_order[i]]; device axes are (x, y, z, rx, ry, rz).
    # Default: robot +x = away from the operator (device -y), robot +y = left (device -x), robot +z = up
    # (device z is positive when pushed down). The same proper rotation applies to the rotation axes.
    axis_order: tuple[int, ...] = (1, 0, 2, 4, 3, 5)
    axis_signs: tuple[float, ...] = (-1.0, -1.0, -1.0, -1.0, -1.0, -1.0)
    right_button_event: str = "save"  # event emitted on a right-button press
    read_timeout_ms: int = 10  # hid read timeout per poll of the background reader


@dataclass
class SpaceMouseState:
    """Scaled device axes and button bitmask after applying all reports seen so far."""

    axes: np.ndarray = field(default_factory=lambda: np.zeros(6))  # (x, y, z, rx, ry, rz) in [-1, 1]
    buttons: int = 0  # bit 0 = left, bit 1 = right


def _scale_axis(raw: int, full_scale: float, deadzone: float) -> float:
    v = float(np.clip(raw / full_scale, -1.0, 1.0))
    if abs(v) < deadzone:
        return 0.0
    # Rescale so output rises continuously from 0 at the deadzone edge instead of jumping to `deadzone`.
    return float(np.sign(v) * (abs(v) - deadzone) / (1.0 - deadzone))


def parse_report(report: bytes, state: Optional[SpaceMouseState] = None, full_scale: float = 350.0, deadzone: float = 0.1) -> SpaceMouseState:
    """Apply one HID input report to `state` (a new one if None) and return it.

    Report id 1: translation x, y, z as int16 little-endian (some newer devices append rx, ry, rz in the same
    report: 13 bytes). Report id 2: rotation rx, ry, rz. Report id 3: button bitmask (byte 1).
    Unknown report ids (battery level, etc.) leave the state unchanged.
    """
    st = state if state is not None else SpaceMouseState(axes=np.zeros(6), buttons=0)
    if not report:
        return st
    rid, payload = report[0], bytes(report[1:])

    def axes(n: int) -> list[float]:
        raw = np.frombuffer(payload[: 2 * n], dtype="<i2")
        return [_scale_axis(int(v), full_scale, deadzone) for v in raw]

    if rid == 1 and len(payload) >= 12:
        st.axes[:] = axes(6)
    elif rid == 1 and len(payload) >= 6:
        st.axes[:3] = axes(3)
    elif rid == 2 and len(payload) >= 6:
        st.axes[3:] = axes(3)
    elif rid == 3 and len(payload) >= 1:
        st.buttons = payload[0]
    return st


class SpaceMouseTeleop:
    """3Dconnexion SpaceMouse via hidapi; a background thread reads reports, read() samples the latest state."""

    def __init__(self, config: Optional[SpaceMouseConfig] = None) -> None:
        self.config = config or SpaceMouseConfig()
        if self.config.right_button_event not in EVENTS:
            raise ValueError(f"right_button_event must be one of {sorted(EVENTS)}")
        self._lock = threading.Lock()
        self._state = SpaceMouseState()
        self._events: set[str] = set()
        self._gripper = _GripperToggle()
        self._device: Any = None
        self._thread: Optional[threading.Thread] = None
        self._running = False
        self._error: Optional[str] = None

    def start(self) -> None:
        try:
            import hid
        except ImportError as e:
            raise TeleopError(f"SpaceMouse teleop needs hidapi ({e}); pip install hidapi") from None
        cfg = self.config
        found = [d for d in hid.enumerate(cfg.vendor_id, 0) if d.get("product_id") in cfg.product_ids]
        if not found:
            raise TeleopError(
                f"no SpaceMouse found (vendor 0x{cfg.vendor_id:04x}, products "
                f"{', '.join(f'0x{p:04x}' for p in cfg.product_ids)}); check the USB cable/receiver and hidraw permissions"
            )
        dev = hid.device()
        try:
            dev.open(cfg.vendor_id, found[0]["product_id"])
        except OSError as e:
            raise TeleopError(f"cannot open SpaceMouse 0x{found[0]['product_id']:04x}: {e} (hidraw udev permissions?)") from None
        self._device = dev
        self._running = True
        self._thread = threading.Thread(target=self._reader, name="spacemouse", daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        while self._running:
            try:
                data = self._device.read(64, self.config.read_timeout_ms)
            except (OSError, ValueError) as e:
                self._error = f"SpaceMouse read failed: {e}"
                return
            if data:
                self.feed(bytes(data))

    def feed(self, report: bytes) -> None:
        """Apply one raw report (from the reader thread, or directly in tests) and record button edges."""
        with self._lock:
            before = self._state.buttons
            parse_report(report, self._state, self.config.full_scale, self.config.deadzone)
            pressed = self._state.buttons & ~before  # rising edges only: holding a button is one press
            if pressed & 0x1:
                self._gripper.toggle()
            if pressed & 0x2:
                self._events.add(self.config.right_button_event)

    def read(self) -> TeleopCommand:
        if self._error:
            raise TeleopError(self._error)
        cfg = self.config
        with self._lock:
            axes = self._state.axes.copy()
            events, self._events = frozenset(self._events), set()
            grip = self._gripper.value
        action = np.zeros(7, dtype=np.float32)
        action[:6] = np.asarray(cfg.axis_signs) * axes[list(cfg.axis_order)]
        action[6] = grip
        return TeleopCommand(action=action, events=events)

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        if self._device is not None:
            self._device.close()
            self._device = None
