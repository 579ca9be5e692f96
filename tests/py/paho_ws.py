"""paho-mqtt (transport="websockets") against `tasmota-sim broker --ws-listen/--wss-listen`.
Run by tests/aws_sdk.rs; prints one line per step, which the Rust test asserts:

  CONNECTED <reason>            CONNACK
  SUBSCRIBED <granted qos>      SUBACK
  RECEIVED <topic> <payload>    our own message, back through the broker
  STOPPED                       DISCONNECT sent
  REFUSED <why>                 no CONNACK, or a refusing one

--ca makes it wss:// (the CA's certificate verified, the host name checked); --header
NAME=VALUE adds a header to the HTTP upgrade (AWS's x-amz-customauthorizer-name).
"""

import argparse
import ssl
import threading

import paho.mqtt.client as mqtt

WAIT = 15.0


def say(line):
    print(line, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", help="PEM CA: wss:// instead of ws://")
    ap.add_argument("--path", default="/mqtt")
    ap.add_argument("--header", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--username")
    ap.add_argument("--password")
    ap.add_argument("--client-id", default="paho-ws")
    ap.add_argument("--topic", default="paho/ws")
    args = ap.parse_args()

    connacked = threading.Event()
    subscribed = threading.Event()
    received = threading.Event()
    state = {}

    def on_connect(_c, _u, _flags, reason, _props):
        state["connack"] = reason
        connacked.set()

    def on_disconnect(_c, _u, _flags, reason, _props):
        state.setdefault("closed", reason)
        connacked.set()

    def on_subscribe(_c, _u, _mid, reasons, _props):
        state["granted"] = reasons[0].value
        subscribed.set()

    def on_message(_c, _u, msg):
        state["msg"] = (msg.topic, msg.payload.decode())
        received.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id, transport="websockets")
    headers = dict(h.split("=", 1) for h in args.header)
    c.ws_set_options(path=args.path, headers=headers or None)
    if args.ca:
        c.tls_set(ca_certs=args.ca, cert_reqs=ssl.CERT_REQUIRED)
    if args.username is not None:
        c.username_pw_set(args.username, args.password)
    c.on_connect, c.on_disconnect = on_connect, on_disconnect
    c.on_subscribe, c.on_message = on_subscribe, on_message
    try:
        c.connect(args.host, args.port, keepalive=30)
    except Exception as e:  # the upgrade refused (HTTP 4xx) or TLS failed
        say(f"REFUSED {type(e).__name__}: {e}")
        return
    c.loop_start()
    if not connacked.wait(WAIT):
        say("REFUSED no CONNACK within 15 s")
    elif "connack" not in state or state["connack"].is_failure:
        say(f"REFUSED {state.get('connack') or 'closed before CONNACK: ' + str(state.get('closed'))}")
    else:
        say(f"CONNECTED {state['connack']}")
        c.subscribe(f"{args.topic}/#", qos=1)
        if subscribed.wait(WAIT):
            say(f"SUBSCRIBED {state['granted']}")
            c.publish(f"{args.topic}/hello", "hello from paho", qos=1)
            if received.wait(WAIT):
                say(f"RECEIVED {state['msg'][0]} {state['msg'][1]}")
        c.disconnect()
        say("STOPPED")
    c.loop_stop()


if __name__ == "__main__":
    main()
