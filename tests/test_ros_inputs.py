"""Polled sensor inputs: the control tick takes what arrived, decodes only the messages that describe each stream now
(the newest, or the shortest newest run a stream says is enough), oldest first, with the receipt time the middleware
stamped; nothing runs between ticks. Real rclpy over DDS on loopback, one process."""

import time

import pytest


@pytest.fixture
def polled():
    import rclpy

    from hardware.ros_inputs import PolledInputs

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    owner = rclpy.create_node("robo_test_owner", context=ctx)
    inputs = PolledInputs(owner)
    try:
        yield owner, inputs
    finally:
        inputs.destroy()
        owner.destroy_node()
        rclpy.try_shutdown(context=ctx)


def _publisher(owner, inputs, msg_type, topic):
    from rclpy.qos import qos_profile_sensor_data

    from robo.bench.node import wait_for

    pub = owner.create_publisher(msg_type, topic, qos_profile_sensor_data)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 10)
    return pub


@pytest.mark.ros
def test_the_tick_decodes_only_the_newest_message_with_its_receipt_time(polled):
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.serialization import deserialize_message
    from std_msgs.msg import String

    owner, inputs = polled
    got = []
    inputs.add(String, "/robo_test/polled", qos_profile_sensor_data, lambda m, t, b: got.append((m.data, t, b)))
    pub = _publisher(owner, inputs, String, "/robo_test/polled")
    assert inputs.node.get_name() == "robo_test_owner_inputs"
    sent_at = time.monotonic()
    for i in range(8):
        pub.publish(String(data=str(i)))
    time.sleep(0.3)
    # DDS kept the newest 5 (the sensor QoS depth); the tick took them all and decoded the newest only.
    assert inputs.drain() == qos_profile_sensor_data.depth
    assert [m for m, _, _ in got] == ["7"]
    assert inputs.superseded == qos_profile_sensor_data.depth - 1
    _, received, raw = got[0]
    assert sent_at - 0.05 <= received <= sent_at + 0.2, received - sent_at  # aged from arrival, 0.3 s ago
    assert deserialize_message(raw, String).data == "7"  # the bytes as they came, for the session recorder
    assert inputs.drain() == 0  # nothing new


@pytest.mark.ros
def test_a_stream_spread_over_messages_decodes_the_newest_run_that_covers_it(polled):
    """Joint states from an arm driver and a gripper driver on one topic: the tick needs both names."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import JointState

    owner, inputs = polled
    got = []
    needed = {"arm", "finger"}
    inputs.add(JointState, "/robo_test/joints", qos_profile_sensor_data, lambda m, t, b: got.append(list(m.name)),
               enough=lambda msgs: needed.issubset(n for m in msgs for n in m.name))
    pub = _publisher(owner, inputs, JointState, "/robo_test/joints")
    for names in (["arm"], ["finger"], ["arm"], ["arm"], ["arm"]):
        pub.publish(JointState(name=names, position=[0.0]))
    time.sleep(0.3)
    assert inputs.drain() == 5
    assert got == [["finger"], ["arm"], ["arm"], ["arm"]]  # oldest first, from the newest finger message on
    got.clear()
    for _ in range(3):
        pub.publish(JointState(name=["arm"], position=[0.0]))
    time.sleep(0.3)
    assert inputs.drain() == 3
    assert got == [["arm"]] * 3  # no finger message queued: all of them, and the handler keeps the last finger


@pytest.mark.ros
def test_bytes_that_do_not_decode_are_counted_and_the_stream_falls_back_to_its_last_good_message(polled):
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.serialization import serialize_message
    from std_msgs.msg import String

    owner, inputs = polled
    got = []
    inputs.add(String, "/robo_test/garbled", qos_profile_sensor_data, lambda m, t, b: got.append(m.data))
    pub = _publisher(owner, inputs, String, "/robo_test/garbled")
    pub.publish(String(data="good"))
    good = serialize_message(String(data="x"))
    pub.publish(good[:4] + b"\xff\xff\xff\x7f")  # a string length far past the end of the buffer
    time.sleep(0.3)
    assert inputs.drain() == 2
    assert got == ["good"]
    assert inputs.undecodable == {"/robo_test/garbled": 1}
