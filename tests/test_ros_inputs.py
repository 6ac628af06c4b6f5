"""Polled sensor inputs: the control tick takes what arrived (newest ``depth``, oldest first) with the receipt time
the middleware stamped, and nothing runs between ticks. Real rclpy over DDS on loopback, one process."""

import time

import pytest


@pytest.mark.ros
def test_the_tick_takes_the_newest_messages_with_their_receipt_times():
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from std_msgs.msg import String

    from hardware.ros_inputs import PolledInputs
    from robo.bench.node import wait_for

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    owner = rclpy.create_node("robo_test_owner", context=ctx)
    inputs = PolledInputs(owner)
    try:
        got = []
        inputs.add(String, "/robo_test/polled", qos_profile_sensor_data, lambda m, t: got.append((m.data, t)))
        pub = owner.create_publisher(String, "/robo_test/polled", qos_profile_sensor_data)
        assert wait_for(lambda: pub.get_subscription_count() > 0, 10)
        assert inputs.node.get_name() == "robo_test_owner_inputs"
        sent_at = time.monotonic()
        for i in range(8):
            pub.publish(String(data=str(i)))
        time.sleep(0.3)
        assert inputs.drain() == qos_profile_sensor_data.depth
        # The sensor QoS keeps the newest 5, handed over oldest first, aged from arrival (0.3 s ago), not from now.
        assert [m for m, _ in got] == ["3", "4", "5", "6", "7"]
        assert all(sent_at - 0.05 <= t <= sent_at + 0.2 for _, t in got), [(t - sent_at) for _, t in got]
        assert inputs.drain() == 0  # nothing new
    finally:
        inputs.destroy()
        owner.destroy_node()
        rclpy.try_shutdown(context=ctx)
