"""A stand-in arm driver for tests, run as a separate process so messages really cross DDS.

Publishes sensor_msgs/JointState and geometry_msgs/PoseStamped at --rate Hz. A received target pose becomes the
new measured pose (a perfectly tracking controller) and a received gripper width sets both fingers to width/2.
Every received command is echoed to stdout as one JSON line so the test can check exactly what went over the wire.
stdin lines control it: "pause" stops publishing state (to provoke staleness), "resume", "quit".
"""

from __future__ import annotations

import argparse
import json
import sys
import threading

import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64

ARM_JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
FINGERS = ["panda_finger_joint1", "panda_finger_joint2"]
JOINT_POS = [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785]


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--domain-id", type=int, required=True)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--prefix", default="/fake_arm")
    args = ap.parse_args()

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=args.domain_id, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("fake_arm_driver", context=ctx)
    state = {"pos": [0.4, 0.0, 0.3], "quat": [1.0, 0.0, 0.0, 0.0], "finger": 0.04, "paused": False}
    lock = threading.Lock()
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    js_pub = node.create_publisher(JointState, f"{args.prefix}/joint_states", reliable)
    pose_pub = node.create_publisher(PoseStamped, f"{args.prefix}/eef_pose", reliable)

    def on_target(msg: PoseStamped) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        with lock:
            state["pos"], state["quat"] = [p.x, p.y, p.z], [o.x, o.y, o.z, o.w]
        emit({"type": "target", "pos": state["pos"], "quat": state["quat"], "frame_id": msg.header.frame_id})

    def on_gripper(msg: Float64) -> None:
        with lock:
            state["finger"] = msg.data / 2.0
        emit({"type": "gripper", "width": msg.data})

    node.create_subscription(PoseStamped, f"{args.prefix}/cartesian_target", on_target, reliable)
    node.create_subscription(Float64, f"{args.prefix}/gripper_command", on_gripper, reliable)

    def publish() -> None:
        with lock:
            if state["paused"]:
                return
            pos, quat, finger = list(state["pos"]), list(state["quat"]), state["finger"]
        now = node.get_clock().now().to_msg()
        js = JointState()
        js.header.stamp = now
        js.name = ARM_JOINTS + FINGERS
        js.position = JOINT_POS + [finger, finger]
        js_pub.publish(js)
        ps = PoseStamped()
        ps.header.stamp = now
        ps.header.frame_id = "panda_link0"
        ps.pose.position.x, ps.pose.position.y, ps.pose.position.z = pos
        ps.pose.orientation.x, ps.pose.orientation.y, ps.pose.orientation.z, ps.pose.orientation.w = quat
        pose_pub.publish(ps)

    node.create_timer(1.0 / args.rate, publish)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    spin = threading.Thread(target=lambda: [executor.spin_once(0.05) for _ in iter(ctx.ok, False)], daemon=True)
    spin.start()
    emit({"type": "ready"})
    for line in sys.stdin:
        cmd = line.strip()
        with lock:
            if cmd == "pause":
                state["paused"] = True
            elif cmd == "resume":
                state["paused"] = False
        if cmd == "quit":
            break
        emit({"type": "ack", "cmd": cmd})
    rclpy.try_shutdown(context=ctx)
    spin.join(timeout=2.0)


if __name__ == "__main__":
    main()
