"""AWS IoT Device SDK v2 for Python (awsiotsdk) against `tasmota-sim broker --profile aws-iot`
through the custom-authorizer builders, as a user of AWS IoT would write it. Run by
tests/aws_sdk.rs; prints one line per step, which the Rust test asserts:

  CONNECTED                   CONNACK 0 (MQTT 3.1.1) / Success (MQTT 5)
  SUBSCRIBED <qos>            SUBACK's granted QoS
  RECEIVED <topic> <payload>  our own message, back through the broker
  STOPPED                     DISCONNECT sent, link closed
  REFUSED <why>               the connect failed: the CRT error name, and for MQTT 5
                              the CONNACK reason code if one came

  --client mqtt3  awsiot.mqtt_connection_builder (awscrt.mqtt, MQTT 3.1.1)
  --client mqtt5  awsiot.mqtt5_client_builder (awscrt.mqtt5)
  --transport direct  direct_with_custom_authorizer: TLS, ALPN "mqtt"
  --transport wss     websockets_with_custom_authorizer: wss://ENDPOINT:PORT/mqtt

Talks only to --endpoint (the tests give "localhost", which the broker serves as its
AWS endpoint so that the SNI the SDK sends matches).
"""

import argparse
import sys
import threading
import time

from awscrt import io, mqtt, mqtt5
from awsiot import mqtt5_client_builder, mqtt_connection_builder

WAIT = 15.0


def say(line):
    print(line, flush=True)


def mqtt3(args):
    build = (
        mqtt_connection_builder.direct_with_custom_authorizer
        if args.transport == "direct"
        else mqtt_connection_builder.websockets_with_custom_authorizer
    )
    received = threading.Event()
    seen = []

    def on_message(topic, payload, **_kwargs):
        seen.append((topic, payload.decode()))
        received.set()

    conn = build(
        endpoint=args.endpoint,
        port=args.port,
        ca_filepath=args.ca,
        client_id=args.client_id,
        auth_username="tasmota",
        auth_authorizer_name=args.authorizer,
        auth_password=args.password,
        clean_session=True,
        keep_alive_secs=30,
    )
    if args.transport == "direct":
        # direct_with_custom_authorizer forces port 443 (kwargs["port"] = 443 in
        # awsiot/mqtt_connection_builder.py); a test cannot own 443, so the port it
        # connects to is set on the Connection, which connect() reads. Username, ALPN
        # "mqtt" and TLS options stay the SDK's.
        conn.port = args.port
    try:
        conn.connect().result(WAIT)
    except Exception as e:  # the CRT raises AwsCrtError (or Exception(ConnectReturnCode))
        say(f"REFUSED {getattr(e, 'name', None) or e}")
        return
    say("CONNECTED")
    topic = f"sdk/mqtt3/{args.transport}"
    sub, _ = conn.subscribe(topic=f"{topic}/#", qos=mqtt.QoS.AT_LEAST_ONCE, callback=on_message)
    say(f"SUBSCRIBED {int(sub.result(WAIT)['qos'])}")
    pub, _ = conn.publish(topic=f"{topic}/hello", payload="hello from awsiotsdk", qos=mqtt.QoS.AT_LEAST_ONCE)
    pub.result(WAIT)
    if received.wait(WAIT):
        say(f"RECEIVED {seen[0][0]} {seen[0][1]}")
    conn.disconnect().result(WAIT)
    say("STOPPED")


def mqtt5_client(args):
    connected = threading.Event()
    failed = []
    received = threading.Event()
    seen = []
    stopped = threading.Event()

    def on_success(_data):
        connected.set()

    def on_failure(data):
        connack = data.connack_packet
        code = connack.reason_code.name if connack is not None else "none"
        failed.append(f"{getattr(data.exception, 'name', None) or data.exception} connack={code}")
        connected.set()

    def on_publish(data):
        p = data.publish_packet
        seen.append((p.topic, bytes(p.payload).decode()))
        received.set()

    build = (
        mqtt5_client_builder.direct_with_custom_authorizer
        if args.transport == "direct"
        else mqtt5_client_builder.websockets_with_custom_authorizer
    )
    client = build(
        endpoint=args.endpoint,
        port=args.port,
        ca_filepath=args.ca,
        client_id=args.client_id,
        auth_username="tasmota",
        auth_authorizer_name=args.authorizer,
        auth_password=args.password,
        on_lifecycle_connection_success=on_success,
        on_lifecycle_connection_failure=on_failure,
        on_lifecycle_stopped=lambda _d: stopped.set(),
        on_publish_received=on_publish,
    )
    client.start()
    if not connected.wait(WAIT):
        say("REFUSED timeout")
        client.stop()
        return
    if failed:
        client.stop()
        stopped.wait(WAIT)
        say(f"REFUSED {failed[0]}")
        return
    say("CONNECTED")
    topic = f"sdk/mqtt5/{args.transport}"
    suback = client.subscribe(
        mqtt5.SubscribePacket(subscriptions=[mqtt5.Subscription(f"{topic}/#", mqtt5.QoS.AT_LEAST_ONCE)])
    ).result(WAIT)
    say(f"SUBSCRIBED {int(suback.reason_codes[0])}")
    client.publish(
        mqtt5.PublishPacket(topic=f"{topic}/hello", payload=b"hello from awsiotsdk", qos=mqtt5.QoS.AT_LEAST_ONCE)
    ).result(WAIT)
    if received.wait(WAIT):
        say(f"RECEIVED {seen[0][0]} {seen[0][1]}")
    client.stop()
    stopped.wait(WAIT)
    say("STOPPED")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--client", choices=["mqtt3", "mqtt5"], required=True)
    ap.add_argument("--transport", choices=["direct", "wss"], required=True)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True, help="PEM of the CA that signed the broker's certificate")
    ap.add_argument("--authorizer", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--client-id", default="awsiotsdk-test")
    ap.add_argument("--log", action="store_true", help="the CRT's own log on stderr (debug level)")
    args = ap.parse_args()
    if args.log:
        io.init_logging(io.LogLevel.Debug, "stderr")
    started = time.monotonic()
    (mqtt3 if args.client == "mqtt3" else mqtt5_client)(args)
    print(f"# {time.monotonic() - started:.2f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
