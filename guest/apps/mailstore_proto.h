// Mail-store wire protocol, shared by the guest app and the host client (`ftvm mail`).
//
// One UDP datagram per request and per reply, plain ASCII header line so a person
// can read a capture. Every request starts with a client-chosen request id that the
// reply echoes, so a retrying client can match replies to requests; DELIVER carries a
// message id that makes retries idempotent (the store answers DUP for a stored id).
//
//   <reqid> PING                                -> <reqid> PONG
//   <reqid> DELIVER <msgid> <mailbox>\n<body>   -> <reqid> OK <msgid> | <reqid> DUP <msgid>
//   <reqid> FETCH <mailbox> <index>             -> <reqid> MSG <msgid>\n<body> | <reqid> NONE
//   <reqid> COUNT <mailbox>                     -> <reqid> COUNT <n>
//   anything malformed                          -> <reqid> ERR <reason>   (reqid "-" if unreadable)
//
// OK is sent only after the message is durable on the virtio disk (journal write +
// flush completed). Indexes in FETCH count from 0 in delivery order.
#ifndef FTVM_GUEST_APPS_MAILSTORE_PROTO_H_
#define FTVM_GUEST_APPS_MAILSTORE_PROTO_H_

#define FTVM_MAIL_PORT          2525u
#define FTVM_MAIL_MAX_REQID     16u
#define FTVM_MAIL_MAX_MSGID     64u
#define FTVM_MAIL_MAX_MAILBOX   32u
#define FTVM_MAIL_MAX_BODY      1024u
#define FTVM_MAIL_MAX_DATAGRAM  1400u

#endif  // FTVM_GUEST_APPS_MAILSTORE_PROTO_H_
