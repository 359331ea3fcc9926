//! Socket addresses as ATS hands them out.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Converts a `sockaddr` from ATS into a [`SocketAddr`] (IPv4 and IPv6 only).
///
/// # Safety
/// `sa` must be null or point to a valid `sockaddr_in` / `sockaddr_in6` (as ATS's address
/// getters guarantee for a live transaction).
pub(crate) unsafe fn to_socket_addr(sa: *const libc::sockaddr) -> Option<SocketAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: non-null and valid per the caller; sa_family is the common first member.
    match unsafe { (*sa).sa_family } as i32 {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let v4 = unsafe { &*(sa as *const libc::sockaddr_in) };
            // Address and port are in network byte order.
            let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(v4.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let v6 = unsafe { &*(sa as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(v6.sin6_port), v6.sin6_flowinfo, v6.sin6_scope_id)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_and_ipv6_addresses_convert_from_network_byte_order() {
        // SAFETY: all-zero is a valid sockaddr_in.
        let mut v4: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        v4.sin_family = libc::AF_INET as libc::sa_family_t;
        v4.sin_port = 8080u16.to_be();
        v4.sin_addr.s_addr = u32::from(Ipv4Addr::new(127, 0, 0, 1)).to_be();
        // SAFETY: points at a live sockaddr_in whose family says so.
        let got = unsafe { to_socket_addr(&v4 as *const _ as *const libc::sockaddr) };
        assert_eq!(got, Some("127.0.0.1:8080".parse().unwrap()));

        // SAFETY: all-zero is a valid sockaddr_in6.
        let mut v6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        v6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        v6.sin6_port = 443u16.to_be();
        v6.sin6_addr.s6_addr = Ipv6Addr::LOCALHOST.octets();
        // SAFETY: points at a live sockaddr_in6 whose family says so.
        let got = unsafe { to_socket_addr(&v6 as *const _ as *const libc::sockaddr) };
        assert_eq!(got, Some("[::1]:443".parse().unwrap()));
        // SAFETY: a null pointer is allowed (it answers None).
        assert_eq!(unsafe { to_socket_addr(std::ptr::null()) }, None);
    }
}
