// loopback.mjs: listen(port[, cb]) -> listen(port, "127.0.0.1"[, cb])
import net from "node:net";
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...a) {
  if (/^\d+$/.test(String(a[0])) && (a.length === 1 || typeof a[1] === "function")) a.splice(1, 0, "127.0.0.1");
  return listen.apply(this, a);
};
